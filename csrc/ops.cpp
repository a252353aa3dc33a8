// The library's op schemas, in the `majority_kernels` namespace. Each backend registers its kernels for them
// (csrc/cpu for CPU); the fake kernels and autograd formulas are registered from Python
// (majority_kernels/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/op_support.h"

namespace {
PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(majority_kernels::cpu::kernels().name);
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The instruction set of the CPU kernels this process runs: avx512, avx2 or portable."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

// Importing majority_kernels._C loads this library and so registers the ops; its one function names the CPU
// kernels' instruction set.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(majority_kernels, m) {
  // W_eff[i] = sum_k P[k, i] * weight[k, i], in out_dtype (default: weight's dtype).
  m.def("combine(Tensor weight, Tensor seed, int offset, ScalarType? out_dtype=None) -> Tensor");
  // grad_weight[k, i] = P[k, i] * grad[i], a new tensor of shape [expansion, *grad.shape].
  m.def("scatter(Tensor grad, Tensor seed, int offset, int expansion, ScalarType? out_dtype=None) -> Tensor");
  // grad_weight[k, i] += P[k, i] * grad[i], in place (gradient accumulation without a temporary).
  m.def("scatter_add_(Tensor(a!) grad_weight, Tensor grad, Tensor seed, int offset) -> ()");
  // P itself, float32 [expansion, numel]: for tests and for users who want to look at it.
  m.def("mixing_weights(Tensor seed, int offset, int expansion, int numel) -> Tensor");
  // Embedding lookup of the mixed table: out[..., d] = sum_k P[k, r * dim + d] * weight[k, r, d] for the rows
  // r = indices[...] only (P of each element from its flat index in the full [rows, dim] table).
  m.def("embedding_combine(Tensor weight, Tensor indices, Tensor seed, int offset, ScalarType? out_dtype=None) "
        "-> Tensor");
  // Its gradient, added in place: grad_weight[k, r, d] += P[k, r * dim + d] * grad[..., d] for every lookup of r.
  m.def("embedding_scatter_add_(Tensor(a!) grad_weight, Tensor grad, Tensor indices, Tensor seed, int offset) -> ()");
  // input [rows, in] @ combine(weight [e, out, in])^T + bias, in input's dtype, W_eff never stored (CUDA: few rows).
  m.def("mixed_linear(Tensor input, Tensor weight, Tensor? bias, Tensor seed, int offset) -> Tensor");
}
