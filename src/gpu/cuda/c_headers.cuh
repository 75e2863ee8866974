/*
 * The project's public headers are C11; nvcc compiles .cu files as C++.
 * This includes them with C linkage and maps the two C11 keywords they use
 * onto their C++ spellings. Every .cu/.cuh includes llorch headers through
 * here only.
 */
#ifndef LLORCH_CUDA_C_HEADERS_CUH
#define LLORCH_CUDA_C_HEADERS_CUH

#ifndef _Static_assert
#define _Static_assert static_assert
#endif
#ifndef _Noreturn
#define _Noreturn [[noreturn]]
#endif

extern "C" {
#include "llorch/backend.h"
#include "llorch/backend_cuda.h"
#include "llorch/error.h"
#include "llorch/gguf.h"
#include "llorch/log.h"
#include "llorch/model.h"
#include "llorch/quant.h"
}

#endif /* LLORCH_CUDA_C_HEADERS_CUH */
