import sys
from pathlib import Path

# Test helpers such as the independent spec reader live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
