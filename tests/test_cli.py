"""The yolo-kd command line: what it sets for Ultralytics, and its one-line refusals before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter without YOLO_OFFLINE/YOLO_AUTOINSTALL set; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in {"YOLO_OFFLINE", "YOLO_AUTOINSTALL"}}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_the_library_changes_no_environment() -> None:
    out = _python(
        """
        import os
        import yolo_kd
        from yolo_kd import KDDetectionTrainer
        print(os.environ.get("YOLO_OFFLINE"), os.environ.get("YOLO_AUTOINSTALL"))
        """
    )
    assert out.splitlines()[-1] == "None None"


@pytest.mark.parametrize("ultralytics_first", [True, False])
def test_cli_turns_auto_install_and_network_probe_off_whatever_the_import_order(ultralytics_first: bool) -> None:
    first = "import os; os.environ['YOLO_OFFLINE'] = '1'; import ultralytics.utils.checks" if ultralytics_first else ""
    out = _python(
        f"""
        {first}
        from yolo_kd.cli import main
        assert main(["help"]) == 0
        import os
        import ultralytics.utils as u
        import ultralytics.utils.checks as c
        print("RESULT", u.AUTOINSTALL, c.AUTOINSTALL, u.ONLINE, c.ONLINE, os.environ["YOLO_AUTOINSTALL"])
        """
    )
    assert out.splitlines()[-1] == "RESULT False False False False false"
