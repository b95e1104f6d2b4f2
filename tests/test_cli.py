"""The `halochat` command line: subcommands listed, and the installed console script runs
(the one test that spawns it: `halochat db`, the embedded database on its own)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymongo import MongoClient

from halochat.cli import COMMANDS, main
from halochat.db.embedded import READY_PREFIX, STATE_FILE

CONSOLE_SCRIPT = Path(sys.executable).parent / "halochat"


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert set(COMMANDS) == {"serve", "seed", "export", "db"}
    for name in COMMANDS:
        assert f"    {name} " in out, out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: halochat {name}")


def test_an_unknown_subcommand_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_installed_console_script_runs_the_embedded_database(tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.exists(), "install the project (make install) for the console script"
    data_dir = tmp_path / "db"
    proc = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "db", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), (line, proc.stderr.read() if proc.stderr else "")
        uri = line.removeprefix(READY_PREFIX).strip()
        assert json.loads((data_dir / STATE_FILE).read_text())["uri"] == uri
        with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
            client["cli"]["things"].insert_one({"n": 1})
            assert client["cli"]["things"].count_documents({}) == 1
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the embedded database stops when its parent goes away
        assert proc.wait(timeout=30) == 0
    assert not (data_dir / STATE_FILE).exists()
