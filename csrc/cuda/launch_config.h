// Launch geometry of the CUDA kernels: grid sizes, the grid-stride loops, packs and their tails, row tiles, and the
// verdict on vector access. Arithmetic only, free of torch and of the CUDA runtime, so that tests/test_cuda.py
// compiles it for the CPU (tests/cuda_launch_host.cpp) and checks it where there is no GPU.
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MK_LAUNCH_HD __host__ __device__ __forceinline__
#else
#define MK_LAUNCH_HD inline
#endif

namespace majority_kernels {
namespace cuda {

constexpr int kThreads = 256;                    // threads per block of every kernel
constexpr int kWarpSize = 32;
constexpr int64_t kMaxGridX = 2147483647;        // CUDA's limits on a grid's x and y dimensions
constexpr int64_t kMaxGridY = 65535;

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b near INT64_MAX.
MK_LAUNCH_HD int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// Packs of `lanes` consecutive elements that cover `extent` elements (the last one possibly partial).
MK_LAUNCH_HD int64_t pack_count(int64_t extent, int lanes) { return ceil_div(extent, lanes); }

// Elements of the pack starting at element `start` that lie inside `extent`: `lanes`, fewer in the tail.
MK_LAUNCH_HD int valid_lanes(int64_t extent, int64_t start, int lanes) {
  return extent - start < lanes ? static_cast<int>(extent - start) : lanes;
}

// Blocks of kThreads for a grid-stride loop over `items` work items of one thread each: enough to fill every SM of
// a device with `sm_count` SMs of `threads_per_sm` resident threads, no more, and at least one.
MK_LAUNCH_HD unsigned int grid_blocks(int64_t items, int sm_count, int threads_per_sm) {
  const int64_t wanted = ceil_div(items, kThreads);
  int64_t resident = static_cast<int64_t>(sm_count) * (threads_per_sm / kThreads);
  resident = resident < 1 ? 1 : (resident > kMaxGridX ? kMaxGridX : resident);
  return static_cast<unsigned int>(wanted < 1 ? 1 : (wanted < resident ? wanted : resident));
}

// The items first, first + stride, ... below end, as a range-for. A step that would pass `end` lands on it, so the
// index never overflows, however close to INT64_MAX `end` is.
class Strided {
 public:
  class Iterator {
   public:
    MK_LAUNCH_HD Iterator(int64_t item, int64_t stride, int64_t end) : item_(item), stride_(stride), end_(end) {}
    MK_LAUNCH_HD int64_t operator*() const { return item_; }
    MK_LAUNCH_HD Iterator& operator++() {
      item_ = end_ - item_ > stride_ ? item_ + stride_ : end_;
      return *this;
    }
    MK_LAUNCH_HD bool operator!=(const Iterator& other) const { return item_ != other.item_; }

   private:
    int64_t item_, stride_, end_;
  };

  MK_LAUNCH_HD Strided(int64_t first, int64_t stride, int64_t end)
      : first_(first < end ? first : end), stride_(stride), end_(end) {}
  MK_LAUNCH_HD Iterator begin() const { return Iterator(first_, stride_, end_); }
  MK_LAUNCH_HD Iterator end() const { return Iterator(end_, stride_, end_); }

 private:
  int64_t first_, stride_, end_;
};

// The work items of thread `thread` of block `block` in a grid of `grid_dim` blocks of `block_dim` threads.
MK_LAUNCH_HD Strided grid_stride(int64_t items, unsigned int block, unsigned int block_dim, unsigned int grid_dim,
                                 unsigned int thread) {
  return Strided(static_cast<int64_t>(block) * block_dim + thread, static_cast<int64_t>(grid_dim) * block_dim, items);
}

// A pack of `lanes` columns of one looked-up row of a [lookups, dim] output: packs run row by row, each row's last
// pack possibly partial.
struct RowPack {
  int64_t lookup;
  int64_t column;
  int valid;
};

MK_LAUNCH_HD RowPack row_pack(int64_t pack, int64_t dim, int lanes) {
  const int64_t per_row = pack_count(dim, lanes);
  const int64_t column = (pack % per_row) * lanes;
  return RowPack{pack / per_row, column, valid_lanes(dim, column, lanes)};
}

// Input rows in tile `tile` of `tile_rows` rows each, for `rows` rows in all: tile_rows, fewer in the last tile.
MK_LAUNCH_HD int rows_in_tile(int64_t rows, int64_t tile, int tile_rows) {
  return valid_lanes(rows, tile * tile_rows, tile_rows);
}

// Whether packs of `lanes` elements may be read and written as aligned vectors: the base addresses a and b aligned
// to a pack of their element type (a_pack and b_pack bytes) and, where the data is `segments` runs of `stride`
// elements (the copies of a weight, the rows of a matrix), every run starting on a pack boundary
// (stride % lanes == 0); a single run may have any length.
MK_LAUNCH_HD bool vector_access(uintptr_t a, size_t a_pack, uintptr_t b, size_t b_pack, int64_t stride, int lanes,
                                int64_t segments) {
  return a % a_pack == 0 && b % b_pack == 0 && (segments <= 1 || stride % lanes == 0);
}

}  // namespace cuda
}  // namespace majority_kernels
