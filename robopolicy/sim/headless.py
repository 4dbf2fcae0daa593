"""Headless rendering that can share a process with torch's compiler.

MuJoCo renders offscreen through EGL; on a machine without a GPU that is Mesa's llvmpipe, which
brings its own LLVM. Triton (which torch loads for `torch.compile`, and diffusers loads through
`torch._dynamo`) brings another one in libtriton. Loading libtriton into a process where llvmpipe's
LLVM is already running crashes it with a segfault in libtriton's initialization, so a process that
renders and then trains, like `robopolicy run` collecting camera demonstrations before training,
died between the two. Loaded in the other order the two coexist: triton, when installed, is loaded
before the first offscreen GL context.
"""

from __future__ import annotations

import importlib.util
import os

_SOFTWARE_GL = ("egl", "osmesa")


def prepare_offscreen_rendering() -> None:
    """Call before creating an offscreen renderer: loads triton first (a no-op where triton is not
    installed or MuJoCo does not render through EGL/OSMesa). MUJOCO_GL itself is set, where unset, by
    the env modules at import, before mujoco reads it; setting it here would come too late."""
    if os.environ.get("MUJOCO_GL", "egl") in _SOFTWARE_GL and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
