// CSR sparse x dense product for XLA:CPU, out[i, :] = sum_p data[p] * x[indices[p], :] over p in row i.
// Cache blocking: x's rows are visited in column blocks that fit in 3/4 of the L2 cache, one pass per block (a cursor
// per row remembers where the row's next block starts; every non-zero is used exactly once whatever the order of a
// row's column indices, and sorted ones make each pass touch only its block). Within a pass, chunks of rows are
// taken from an atomic counter by the calling thread and by helpers on XLA's intra-op thread pool; each output row
// is written by one thread per pass. Built by llm4sbr_jax/sparse_cpu.py on first use.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunkRows = 64;
constexpr int kPrefetch = 8;  // non-zeros ahead whose x row is prefetched

// Rows [begin, end), the non-zeros of each row from cursor[i] while their column is below `limit`; the first pass
// starts from zero, later ones add to out. D > 0 fixes the width at compile time, D = 0 reads d.
// Column indices are trusted to lie in [0, n_cols) (sparse_cpu.csr_matmul checks concrete ones; a check here
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

// One pass (column block) over all rows.
struct Pass {
  RowsFn rows;
  int64_t n_rows, d, num_chunks;
  int32_t limit;
  bool first;
  const int32_t *indptr, *indices;
  const float *data, *x;
  int32_t* cursor;
  float* out;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  void Drain() {
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
      const int64_t begin = c * kChunkRows, end = std::min(n_rows, begin + kChunkRows);
      rows(begin, end, d, limit, first, indptr, indices, data, x, cursor, out);
      if (done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

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
  const int64_t num_chunks = (n_rows + kChunkRows - 1) / kChunkRows;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks) - 1;
  for (int64_t b = 0; b < blocks; ++b) {
    auto pass = std::make_shared<Pass>();  // shared: a helper may start after the pass is over
    pass->rows = Pick(d);
    pass->n_rows = n_rows;
    pass->d = d;
    pass->num_chunks = num_chunks;
    // The last pass takes every remaining non-zero.
    pass->limit = b + 1 == blocks ? INT32_MAX : static_cast<int32_t>((b + 1) * n_cols / blocks);
    pass->first = b == 0;
    pass->indptr = indptr.typed_data();
    pass->indices = indices.typed_data();
    pass->data = data.typed_data();
    pass->x = x.typed_data();
    pass->cursor = cursor.data();
    pass->out = out->typed_data();
    for (int64_t t = 0; t < helpers; ++t) pool.Schedule([pass] { pass->Drain(); });
    pass->Drain();
    std::unique_lock<std::mutex> lock(pass->mu);
    pass->cv.wait(lock, [&] { return pass->done.load() == pass->num_chunks; });
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
