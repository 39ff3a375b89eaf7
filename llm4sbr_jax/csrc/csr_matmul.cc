// CSR sparse x dense product for XLA:CPU, out[i, :] = sum_p data[p] * x[indices[p], :] over p in row i.
// Cache blocking: x's rows are visited in column blocks that fit in 3/4 of the L2 cache, one pass per block (a cursor
// per row remembers where the row's next block starts; every non-zero is used exactly once whatever the order of a
// row's column indices, and sorted ones make each pass touch only its block). Within a pass, chunks of rows are
// taken from an atomic counter by the calling thread and by helpers on XLA's intra-op thread pool; each output row
// is written by one thread per pass. Built by llm4sbr_jax/cpu_kernels.py on first use.
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunkRows = 64;
constexpr int kPrefetch = 8;  // non-zeros ahead whose x row is prefetched

// Rows [begin, end), the non-zeros of each row from cursor[i] while their column is below `limit`; the first pass
// starts from zero, later ones add to out. D > 0 fixes the width at compile time, D = 0 reads d.
// Column indices are trusted to lie in [0, n_cols) (cpu_kernels.csr_matmul checks concrete ones; a check here
// would cost a fifth of the product).
template <int D>
void Rows(int64_t begin, int64_t end, int64_t d_runtime, int32_t limit, bool first, const int32_t* indptr,
          const int32_t* indices, const float* data, const float* x, int32_t* cursor, float* out) {
  const int64_t d = D > 0 ? D : d_runtime;
  float acc[D > 0 ? D : 1024];
  for (int64_t i = begin; i < end; ++i) {
    float* row_out = out + i * d;
    if (first) {
      for (int64_t k = 0; k < d; ++k) acc[k] = 0.f;
    } else {
      std::memcpy(acc, row_out, d * sizeof(float));
    }
    const int32_t stop = indptr[i + 1];
    int32_t p = cursor[i];
    for (; p < stop && indices[p] < limit; ++p) {
      if (p + kPrefetch < stop && indices[p + kPrefetch] < limit) {  // in this block only
        const char* ahead = reinterpret_cast<const char*>(x + int64_t{indices[p + kPrefetch]} * d);
        for (int64_t b = 0; b < d * int64_t{sizeof(float)}; b += 64) __builtin_prefetch(ahead + b);
      }
      const float v = data[p];
      const float* row = x + int64_t{indices[p]} * d;
      for (int64_t k = 0; k < d; ++k) acc[k] += v * row[k];
    }
    cursor[i] = p;
    std::memcpy(row_out, acc, d * sizeof(float));
  }
}

using RowsFn = void (*)(int64_t, int64_t, int64_t, int32_t, bool, const int32_t*, const int32_t*, const float*,
                        const float*, int32_t*, float*);

RowsFn Pick(int64_t d) {
  switch (d) {
    case 16: return Rows<16>;
    case 32: return Rows<32>;
    case 64: return Rows<64>;
    case 100: return Rows<100>;
    case 128: return Rows<128>;
    case 256: return Rows<256>;
    default: return Rows<0>;
  }
}

// Column blocks whose rows of x fill at most 3/4 of the L2 cache (1.5 MiB where its size is unknown): on Beauty
// (x 4.8 MB, L2 2 MiB) 4 blocks take 4.8 ms per product, one 7.6 ms.
int64_t NumBlocks(int64_t n_cols, int64_t d) {
  long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const int64_t budget = l2 > 0 ? l2 * 3 / 4 : int64_t{3} << 19;
  const int64_t bytes = n_cols * d * int64_t{sizeof(float)};
  return std::clamp<int64_t>((bytes + budget - 1) / std::max<int64_t>(budget, 1), 1, 64);
}

ffi::Error CsrMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices,
                         ffi::Buffer<ffi::F32> data, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  const auto xdims = x.dimensions();
  const auto odims = out->dimensions();
  if (xdims.size() != 2 || odims.size() != 2 || xdims[1] != odims[1]) {
    return ffi::Error::InvalidArgument("csr_matmul: x [n_cols, d] and out [n_rows, d] expected");
  }
  const int64_t n_rows = odims[0], n_cols = xdims[0], d = odims[1];
  if (indptr.element_count() != static_cast<size_t>(n_rows + 1) || indices.element_count() != data.element_count()) {
    return ffi::Error::InvalidArgument("csr_matmul: indptr [n_rows + 1] and indices / data [nnz] expected");
  }
  if (d > 1024) return ffi::Error::InvalidArgument("csr_matmul: at most 1024 columns");
  std::vector<int32_t> cursor(indptr.typed_data(), indptr.typed_data() + n_rows);
  const int64_t blocks = NumBlocks(n_cols, d);
  const RowsFn rows = Pick(d);
  for (int64_t b = 0; b < blocks; ++b) {
    // The last pass takes every remaining non-zero.
    const int32_t limit = b + 1 == blocks ? INT32_MAX : static_cast<int32_t>((b + 1) * n_cols / blocks);
    llm4sbr::ParallelFor(pool, n_rows, kChunkRows, [&](int64_t begin, int64_t end) {
      rows(begin, end, d, limit, b == 0, indptr.typed_data(), indices.typed_data(), data.typed_data(),
           x.typed_data(), cursor.data(), out->typed_data());
    });
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Llm4sbrCsrMatmul, CsrMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
