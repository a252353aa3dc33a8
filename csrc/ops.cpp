// The extension's Python module. The ops of the `majority_kernels` namespace are defined in Python, each schema
// beside its fake kernel and autograd formula (majority_kernels/ops.py), before this library loads; the kernels
// register for them with TORCH_LIBRARY_IMPL (csrc/cpu, csrc/cuda).
#include <Python.h>

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

// Importing majority_kernels._C loads this library and so registers the kernels; its one function names the CPU
// kernels' instruction set.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module);
}
