// The CUDA kernels' launch geometry (csrc/cuda/launch_config.h) built for the CPU, called through ctypes by
// tests/test_cuda.py: every (block, thread) of a launch is walked one after the other, with the kernels' own loops,
// recording which elements each touches. No GPU needed.
#include "launch_config.h"

namespace mk = majority_kernels::cuda;

extern "C" {

unsigned int mk_grid_blocks(int64_t items, int sm_count, int threads_per_sm) {
  return mk::grid_blocks(items, sm_count, threads_per_sm);
}

int mk_vector_access(uint64_t a, uint64_t a_pack, uint64_t b, uint64_t b_pack, int64_t stride, int lanes,
                     int64_t segments) {
  return mk::vector_access(a, a_pack, b, b_pack, stride, lanes, segments);
}

// The items a Strided(first, stride, end) visits, into visited[0, capacity); returns how many (capacity + 1 if
// there are more).
int64_t mk_strided(int64_t first, int64_t stride, int64_t end, int64_t* visited, int64_t capacity) {
  int64_t count = 0;
  for (const int64_t item : mk::Strided(first, stride, end)) {
    if (count == capacity) return capacity + 1;
    visited[count++] = item;
  }
  return count;
}

// The elementwise kernels (combine, scatter) on `numel` elements in packs of `lanes`, over the grid the launcher
// sizes for a device of `sm_count` SMs x `threads_per_sm`: counts[i] += 1 for every element a pack covers. Returns
// -1 if a pack starts outside the tensor, else the grid's block count.
int64_t mk_cover_elementwise(int64_t numel, int lanes, int sm_count, int threads_per_sm, int32_t* counts) {
  const int64_t packs = mk::pack_count(numel, lanes);
  const unsigned int blocks = mk::grid_blocks(packs, sm_count, threads_per_sm);
  for (unsigned int block = 0; block < blocks; ++block)
    for (unsigned int thread = 0; thread < mk::kThreads; ++thread)
      for (const int64_t pack : mk::grid_stride(packs, block, mk::kThreads, blocks, thread)) {
        const int64_t start = pack * lanes;
        if (start >= numel) return -1;
        for (int j = 0; j < mk::valid_lanes(numel, start, lanes); ++j) ++counts[start + j];
      }
  return blocks;
}

// The embedding kernels on `lookups` rows of `dim` columns: counts[lookup * dim + column] += 1 per element a pack
// covers. Returns -1 for a pack outside the rows or columns, else the block count.
int64_t mk_cover_rows(int64_t lookups, int64_t dim, int lanes, int sm_count, int threads_per_sm, int32_t* counts) {
  const int64_t packs = lookups * mk::pack_count(dim, lanes);
  const unsigned int blocks = mk::grid_blocks(packs, sm_count, threads_per_sm);
  for (unsigned int block = 0; block < blocks; ++block)
    for (unsigned int thread = 0; thread < mk::kThreads; ++thread)
      for (const int64_t pack : mk::grid_stride(packs, block, mk::kThreads, blocks, thread)) {
        const mk::RowPack at = mk::row_pack(pack, dim, lanes);
        if (at.lookup >= lookups || at.column >= dim || at.valid < 1) return -1;
        for (int j = 0; j < at.valid; ++j) ++counts[at.lookup * dim + at.column + j];
      }
  return blocks;
}

// The fused small-M linear kernel (mixed_linear.cu) on a [rows, features_in] input and [features_out, features_in]
// weight with tiles of `tile_rows` input rows: written[r * features_out + n] += 1 per output element a lane writes,
// read[n * features_in + i] += 1 per weight element a lane mixes. Returns -1 for an index out of range, else the
// grid's x size.
int64_t mk_cover_linear(int64_t rows, int64_t features_out, int64_t features_in, int lanes, int tile_rows,
                        int sm_count, int threads_per_sm, int32_t* written, int32_t* read) {
  constexpr int warps = mk::kThreads / mk::kWarpSize;
  const unsigned int blocks = mk::grid_blocks(features_out * mk::kWarpSize, sm_count, threads_per_sm);
  const int64_t tiles = mk::ceil_div(rows, tile_rows);
  for (int64_t tile = 0; tile < tiles; ++tile)
    for (unsigned int block = 0; block < blocks; ++block)
      for (unsigned int thread = 0; thread < mk::kThreads; ++thread) {
        const int lane = thread % mk::kWarpSize;
        const int in_tile = mk::rows_in_tile(rows, tile, tile_rows);
        for (const int64_t n : mk::grid_stride(features_out, block, warps, blocks, thread / mk::kWarpSize)) {
          if (n >= features_out) return -1;
          for (const int64_t i : mk::Strided(static_cast<int64_t>(lane) * lanes, mk::kWarpSize * lanes,
                                             features_in)) {
            const int valid = mk::valid_lanes(features_in, i, lanes);
            if (i >= features_in || valid < 1) return -1;
            for (int j = 0; j < valid; ++j) ++read[n * features_in + i + j];
          }
          // After the warp's reduction, lane r writes row r of the tile.
          if (lane < in_tile) ++written[(tile * tile_rows + lane) * features_out + n];
        }
      }
  return blocks;
}
}
