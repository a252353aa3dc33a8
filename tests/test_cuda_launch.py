"""The CUDA kernels' launch geometry (csrc/cuda/launch_config.h) on the host, no GPU needed: every (block, thread)
of a launch walked with the kernels' own loops (tests/cuda_launch_host.cpp), for devices small enough that each
thread takes several grid-stride steps. Every element is covered exactly once, no pack lies outside its tensor,
grids stay within CUDA's limits for any size, and vector access is granted only where every pack is aligned."""

import ctypes

import numpy as np
import pytest
from helpers import host_library

INT64_MAX = 2**63 - 1
MAX_GRID_X = 2**31 - 1
THREADS = 256
# (SMs, resident threads per SM): an H200, and a device of 2 blocks (512 threads) where loops go round many times.
H200 = (132, 2048)
TINY = (1, 512)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    library = host_library("cuda_launch_host.cpp", tmp_path_factory.mktemp("launch_host"))
    library.mk_grid_blocks.restype = ctypes.c_uint
    library.mk_grid_blocks.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    library.mk_vector_access.argtypes = [
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    library.mk_strided.restype = ctypes.c_int64
    library.mk_strided.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    for name in ("mk_cover_elementwise", "mk_cover_rows", "mk_cover_linear"):
        getattr(library, name).restype = ctypes.c_int64
    return library


def _counts(size: int) -> np.ndarray:
    return np.zeros(max(size, 1), dtype=np.int32)


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


@pytest.mark.parametrize(
    "items, expected",
    [
        (0, 1),
        (1, 1),
        (THREADS, 1),
        (THREADS + 1, 2),
        (100 * THREADS, 100),
        (10**6, 132 * 8),
        (2**62, 132 * 8),
        (INT64_MAX, 132 * 8),
    ],
)
def test_grid_blocks_fill_the_device_and_no_more(host, items, expected):
    assert host.mk_grid_blocks(items, *H200) == expected


def test_grid_blocks_stay_within_the_grid_limit(host):
    assert host.mk_grid_blocks(INT64_MAX, 2**31 - 1, 2048) == MAX_GRID_X  # 2^34 resident blocks asked for
    assert host.mk_grid_blocks(INT64_MAX, 16, 128) == 1  # fewer resident threads than a block: still one block


def test_strided_loop_never_passes_its_end(host):
    def visit(first, stride, end, capacity=16):
        visited = np.zeros(capacity, dtype=np.int64)
        count = host.mk_strided(first, stride, end, _pointer(visited), capacity)
        assert count <= capacity, (first, stride, end)
        return visited[:count].tolist()

    assert visit(3, 4, 15) == [3, 7, 11]
    assert visit(3, 4, 3) == [] and visit(9, 4, 3) == []
    # Next to INT64_MAX a plain `item += stride` would overflow and wrap to a negative index.
    assert visit(INT64_MAX - 10, 2**40, INT64_MAX) == [INT64_MAX - 10]
    assert visit(INT64_MAX - 3, 1, INT64_MAX) == [INT64_MAX - 3, INT64_MAX - 2, INT64_MAX - 1]
    assert visit(INT64_MAX - 2**33, 2**32, INT64_MAX) == [INT64_MAX - 2**33, INT64_MAX - 2**32]


@pytest.mark.parametrize("device", [H200, TINY], ids=["h200", "tiny"])
@pytest.mark.parametrize("lanes", [2, 4, 8])
@pytest.mark.parametrize("numel", [0, 1, 3, 8, 9, 1023, 1024, 1025, 4 * 512 * 3 + 5, 70001])
def test_elementwise_packs_cover_every_element_once(host, numel, lanes, device):
    counts = _counts(numel)
    blocks = host.mk_cover_elementwise(numel, lanes, *device, _pointer(counts))
    assert blocks >= 1, "a pack started outside the tensor"
    assert (counts[:numel] == 1).all() and counts[numel:].sum() == 0
    packs = -(-numel // lanes)
    assert blocks == max(1, min(-(-packs // THREADS), device[0] * device[1] // THREADS))


@pytest.mark.parametrize("device", [H200, TINY], ids=["h200", "tiny"])
@pytest.mark.parametrize("lanes", [2, 4, 8])
@pytest.mark.parametrize("lookups, dim", [(1, 1), (3, 5), (7, 8), (64, 9), (33, 100), (1000, 3)])
def test_embedding_row_packs_cover_every_element_once(host, lookups, dim, lanes, device):
    counts = _counts(lookups * dim)
    assert host.mk_cover_rows(lookups, dim, lanes, *device, _pointer(counts)) >= 1, "a pack outside the rows"
    assert (counts == 1).all()


@pytest.mark.parametrize("device", [H200, TINY], ids=["h200", "tiny"])
@pytest.mark.parametrize("lanes", [4, 8])
@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("features_out, features_in", [(1, 1), (7, 13), (100, 64), (21, 300)])
def test_fused_linear_writes_every_output_once_and_reads_the_weight_once_per_tile(
    host, rows, features_out, features_in, lanes, device
):
    written, read = _counts(rows * features_out), _counts(features_out * features_in)
    blocks = host.mk_cover_linear(
        rows, features_out, features_in, lanes, 16, *device, _pointer(written), _pointer(read)
    )
    assert blocks >= 1, "an output feature or input column out of range"
    assert (written == 1).all()
    assert (read == -(-rows // 16)).all()  # once per tile of 16 rows


# Addresses and pack sizes in bytes: float32 packs of 4 elements are 16 bytes, bfloat16 ones 8.
@pytest.mark.parametrize(
    "a, b, b_pack, stride, lanes, segments, expected",
    [
        (0x1000, 0x2000, 16, 1024, 4, 4, True),  # aligned, every copy starts on a pack
        (0x1004, 0x2000, 16, 1024, 4, 4, False),  # a view one float into its storage
        (0x1000, 0x2004, 16, 1024, 4, 4, False),
        (0x1000, 0x2000, 16, 1023, 4, 4, False),  # copy 1 would start mid-pack
        (0x1000, 0x2000, 16, 1023, 4, 1, True),  # a single run: its tail is handled element by element
        (0x1000, 0x2008, 8, 1024, 4, 2, True),  # a bfloat16 output needs 8-byte alignment only
        (0x1000, 0x2008, 16, 1024, 4, 2, False),
    ],
)
def test_vector_access_verdict(host, a, b, b_pack, stride, lanes, segments, expected):
    assert bool(host.mk_vector_access(a, 16, b, b_pack, stride, lanes, segments)) is expected
