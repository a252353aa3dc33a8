"""The README's quick start runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs():
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README quick start", "exec"), namespace)
    model, reference_copy = namespace["model"], namespace["reference_copy"]
    x = namespace["torch"].randn(3, 64)
    assert not any("MK" in type(m).__name__ for m in model.modules())
    assert namespace["torch"].equal(model(x), reference_copy.eval()(x))
