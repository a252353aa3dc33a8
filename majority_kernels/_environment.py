"""The environment variables that choose kernels at run time (MK_BACKEND, MK_LINEAR_PATH, MK_WGRAD_PATH).

They are read when a layer runs, or once when torch.compile traces it: the compiled graph keeps the value it was
traced with (as torch's own tracing of os.environ does). Call `_environment.read(...)` through the module: torch
2.4's tracer, which cannot look up an unset variable in os.environ, then takes the result as a constant instead
of tracing into it (imported by name, 2.4 would rebind the name to that constant).
"""

import os

import torch


@torch._dynamo.assume_constant_result
def read(name: str) -> str:
    """The variable's value, stripped and lower-cased; "" when it is unset."""
    return os.environ.get(name, "").strip().lower()
