import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SDPARITY_CACHE", str(ROOT / ".cache" / "sdparity"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
