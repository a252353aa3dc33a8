// CPU kernels of the embedding ops: the looked-up rows of the mixed table (embedding_combine) and their gradient
// added to the table's gradient (embedding_scatter_add_). Only the looked-up rows are read, mixed and written.
//
// Work items are (lookup or row, block of kLanes columns). P of a block comes from the shared kernels
// (KernelTable::mixing_*) at the flat index r * dim + d0 of the block in the full [rows, dim] table, so a row is
// mixed exactly as a full-table combine mixes it; it is never kept beyond the block. A block is the row's columns
// [d0, d0 + kLanes) or fewer at the row's end, so narrow tables draw only what they use.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "op_support.h"

namespace majority_kernels {
namespace cpu {
namespace {

// The looked-up rows, flat, as int64 (int32 indices are widened; int64 ones are used in place). An index outside
// [0, rows) raises an IndexError naming it and its position.
at::Tensor checked_rows(const at::Tensor& indices, int64_t rows, const char* op) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, "majority_kernels.",
                   op, ": indices must be int64 or int32, got ", indices.scalar_type());
  TORCH_CHECK(indices.device().is_cpu(), "majority_kernels.", op,
              ": indices must be a CPU tensor for the CPU kernels, got ", indices.device());
  at::Tensor flat = indices.to(at::kLong).contiguous().view(-1);
  const int64_t* row = flat.const_data_ptr<int64_t>();
  for (int64_t n = 0; n < flat.numel(); ++n) {
    TORCH_CHECK_INDEX(row[n] >= 0 && row[n] < rows, "majority_kernels.", op, ": index ", row[n],
                      " (at flat position ", n, " of indices) is out of range for a table of ", rows, " rows");
  }
  return flat;
}

int64_t column_blocks(int64_t dim) { return (dim + kLanes - 1) / kLanes; }

// out[n, d] = sum_k P[k, row[n] * dim + d] * weight[k, row[n], d] for every lookup n.
template <typename in_t, typename out_t>
void gather_combine(const MixingArgs& args, const in_t* weight, int64_t rows, int64_t dim, const int64_t* row,
                    int64_t lookups, out_t* out) {
  using T = math_t<in_t>;
  const KernelTable& table = kernels();
  const int64_t blocks = column_blocks(dim);
  const int64_t table_numel = rows * dim;
  at::parallel_for(0, lookups * blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    std::vector<T> mix(args.expansion * std::min(kLanes, dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, d0 = item % blocks * kLanes;
      const int64_t lanes = std::min(kLanes, dim - d0);
      const int64_t first = row[n] * dim + d0;
      compute_mixing(table, args, first, lanes, mix.data());
      T acc[kLanes];
      for (int64_t l = 0; l < lanes; ++l) acc[l] = mix[l] * static_cast<T>(weight[first + l]);
      for (int64_t k = 1; k < args.expansion; ++k) {
        const in_t* wk = weight + k * table_numel + first;
        const T* pk = mix.data() + k * lanes;
        for (int64_t l = 0; l < lanes; ++l) acc[l] += pk[l] * static_cast<T>(wk[l]);
      }
      out_t* o = out + n * dim + d0;
      for (int64_t l = 0; l < lanes; ++l) o[l] = static_cast<out_t>(acc[l]);
    }
  });
}

at::Tensor embedding_combine(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& seed,
                             int64_t offset, std::optional<at::ScalarType> out_dtype) {
  const char* op = "embedding_combine";
  check_floating(weight, "weight");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) >= 1, "majority_kernels.", op,
              ": weight must have shape [expansion, rows, dim] with expansion >= 1, got ", weight.sizes());
  const at::Tensor table = weight.contiguous();
  const int64_t rows = table.size(1), dim = table.size(2);
  const at::Tensor row = checked_rows(indices, rows, op);
  const MixingArgs args{read_seed(seed), static_cast<uint64_t>(offset), table.size(0)};
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(dim);
  const at::ScalarType dtype = out_dtype.value_or(table.scalar_type());
  at::Tensor out = at::empty(shape, table.options().dtype(dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "embedding_combine_in", [&] {
    using in_t = scalar_t;
    const in_t* w = table.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "embedding_combine_out", [&] {
      gather_combine(args, w, rows, dim, row.const_data_ptr<int64_t>(), row.numel(),
                     out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

// The lookups grouped by row: lookup[starts[s] .. starts[s + 1]) are the positions (ascending) of the lookups of
// row row_of[s]. Grouping lets each (row, column block) be owned by one task (repeated indices never race) and
// regenerates P once per distinct row, whatever its count.
struct RowGroups {
  std::vector<int64_t> row_of, starts, lookup;
};

RowGroups group_by_row(const int64_t* row, int64_t lookups) {
  std::vector<std::pair<int64_t, int64_t>> sorted(lookups);
  for (int64_t n = 0; n < lookups; ++n) sorted[n] = {row[n], n};
  std::sort(sorted.begin(), sorted.end());
  RowGroups groups;
  groups.lookup.reserve(lookups);
  for (int64_t j = 0; j < lookups; ++j) {
    if (j == 0 || sorted[j].first != sorted[j - 1].first) {
      groups.row_of.push_back(sorted[j].first);
      groups.starts.push_back(j);
    }
    groups.lookup.push_back(sorted[j].second);
  }
  groups.starts.push_back(lookups);
  return groups;
}

// grad_weight[k, r, d] += P[k, r * dim + d] * sum_{n: row[n] = r} grad[n, d] for every looked-up row r. The sum
// over a row's lookups comes first: P is the same for all of them.
template <typename in_t, typename out_t>
void scatter_rows(const MixingArgs& args, const in_t* grad, int64_t rows, int64_t dim, const RowGroups& groups,
                  out_t* grad_weight) {
  using T = math_t<out_t>;
  const KernelTable& table = kernels();
  const int64_t blocks = column_blocks(dim);
  const int64_t table_numel = rows * dim;
  const int64_t distinct = static_cast<int64_t>(groups.row_of.size());
  at::parallel_for(0, distinct * blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    std::vector<T> mix(args.expansion * std::min(kLanes, dim));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / blocks, d0 = item % blocks * kLanes;
      const int64_t lanes = std::min(kLanes, dim - d0);
      T acc[kLanes] = {};
      for (int64_t j = groups.starts[s]; j < groups.starts[s + 1]; ++j) {
        const in_t* g = grad + groups.lookup[j] * dim + d0;
        for (int64_t l = 0; l < lanes; ++l) acc[l] += static_cast<T>(g[l]);
      }
      const int64_t first = groups.row_of[s] * dim + d0;
      compute_mixing(table, args, first, lanes, mix.data());
      for (int64_t k = 0; k < args.expansion; ++k) {
        out_t* o = grad_weight + k * table_numel + first;
        const T* pk = mix.data() + k * lanes;
        for (int64_t l = 0; l < lanes; ++l) o[l] = static_cast<out_t>(static_cast<T>(o[l]) + pk[l] * acc[l]);
      }
    }
  });
}

void embedding_scatter_add_(at::Tensor& grad_weight, const at::Tensor& grad, const at::Tensor& indices,
                            const at::Tensor& seed, int64_t offset) {
  const char* op = "embedding_scatter_add_";
  check_floating(grad_weight, "grad_weight");
  check_floating(grad, "grad");
  TORCH_CHECK(grad_weight.dim() == 3 && grad_weight.size(0) >= 1, "majority_kernels.", op,
              ": grad_weight must have shape [expansion, rows, dim] with expansion >= 1, got ", grad_weight.sizes());
  TORCH_CHECK(grad_weight.is_contiguous(), "majority_kernels.", op, ": grad_weight must be contiguous");
  const int64_t rows = grad_weight.size(1), dim = grad_weight.size(2);
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(dim);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(shape), "majority_kernels.", op,
              ": grad must have shape [*indices.shape, dim] = ", at::IntArrayRef(shape), ", got ", grad.sizes());
  const at::Tensor row = checked_rows(indices, rows, op);
  const MixingArgs args{read_seed(seed), static_cast<uint64_t>(offset), grad_weight.size(0)};
  if (grad.numel() == 0) return;
  const RowGroups groups = group_by_row(row.const_data_ptr<int64_t>(), row.numel());
  const at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "embedding_scatter_in", [&] {
    using in_t = scalar_t;
    const in_t* gp = g.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "embedding_scatter_out", [&] {
      scatter_rows(args, gp, rows, dim, groups, grad_weight.mutable_data_ptr<scalar_t>());
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(majority_kernels, CPU, m) {
  m.impl("embedding_combine", &embedding_combine);
  m.impl("embedding_scatter_add_", &embedding_scatter_add_);
}

}  // namespace cpu
}  // namespace majority_kernels
