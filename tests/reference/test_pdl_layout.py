"""refengine/ops/pdl.py's ctypes mirrors of the driver's launch structs (cuda.h, CUDA 12+) have the C layout:
a wrong offset would hand cuLaunchKernelEx a garbage stream or attribute, which no CPU test could see later."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from refengine.ops import pdl


def test_launch_attribute_layout():
    # CUlaunchAttribute: CUlaunchAttributeID id; char pad[4]; CUlaunchAttributeValue value (a 64-byte union)
    assert ctypes.sizeof(pdl._Attr) == 72
    assert pdl._Attr.value.offset == 8
    assert ctypes.sizeof(pdl._AttrValue) == 64


def test_launch_config_layout():
    # CUlaunchConfig: 7 unsigned ints, CUstream hStream, CUlaunchAttribute* attrs, unsigned int numAttrs
    assert pdl._Config.sharedMemBytes.offset == 24
    assert pdl._Config.hStream.offset == 32
    assert pdl._Config.attrs.offset == 40
    assert pdl._Config.numAttrs.offset == 48
    assert ctypes.sizeof(pdl._Config) == 56


def test_kernel_arguments():
    assert isinstance(pdl._arg(np.int32(-3)), ctypes.c_int32) and pdl._arg(np.int32(-3)).value == -3
    assert pdl._arg(np.float32(0.5)).value == 0.5
    assert pdl._arg(np.uint64(0)).value == 0
    with pytest.raises(TypeError, match="unsupported kernel argument"):
        pdl._arg(3.0)


def test_inactive_outside_captures():
    assert pdl.active() is False
