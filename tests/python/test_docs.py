"""The "Quick example" of docs/python.md runs as written."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"


def test_quick_example_runs(capsys):
    text = DOC.read_text()
    m = re.search(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert m, "no ```python block in docs/python.md"
    exec(compile(m.group(1), str(DOC), "exec"), {"__name__": "docs_python_quick_example"})
    out = capsys.readouterr().out
    assert "QuantizedMatrix nvfp4-16" in out and "error vs fp32:" in out
