"""Run the ``scnym`` CLI in a subprocess where importing torch fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked")
    sys.meta_path.insert(0, Block())
    from scnym.cli import main
    try:
        main(sys.argv[1:])
    finally:
        assert "torch" not in sys.modules
    """
)


def run_cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    """``scnym ARGS`` with torch blocked; fails if anything imported torch."""
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True, check=False
    )
