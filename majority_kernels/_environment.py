"""The environment variables that choose kernels at run time (MK_BACKEND, MK_LINEAR_PATH, MK_WGRAD_PATH).

They are read when a layer runs, or once when torch.compile traces it: the compiled graph keeps the value it was
traced with (torch's tracing of os.environ does that from torch 2.5 on). torch 2.4's tracer cannot look up an unset
variable in os.environ; there `read` is marked as having a constant result, which it then takes instead of tracing
into it. Call it as `_environment.read(...)`: imported by name, torch 2.4 would rebind the name to that constant.
"""

import os

import torch


def read(name: str) -> str:
    """The variable's value, stripped and lower-cased; "" when it is unset."""
    return os.environ.get(name, "").strip().lower()


# Only where needed: marking imports torch's compiler, about a second added to every import of the package.
if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 5):
    read = torch.compiler.assume_constant_result(read)
