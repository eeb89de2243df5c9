import sys
from pathlib import Path

# tests/ holds shared helpers (synthetic.py) importable by every test package.
sys.path.insert(0, str(Path(__file__).parent))
