import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_docs_cli_md_matches_the_code():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_docs.py"), "--check"])
    assert r.returncode == 0, "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
