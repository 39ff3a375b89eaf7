// CSR sparse x dense product for XLA:CPU, out[i, :] = sum_p data[p] * x[indices[p], :] over p in row i.
// Rows are split into chunks taken from an atomic counter by the calling thread and by helpers scheduled on XLA's
// intra-op thread pool; each output row is written once (no atomics on the output). Built by
// llm4sbr_jax/sparse_cpu.py on first use.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunkRows = 64;
constexpr int kPrefetch = 8;  // non-zeros ahead whose x row is prefetched

// Rows [begin, end); D > 0 fixes the width at compile time (the accumulator stays in registers), D = 0 reads d.
template <int D>
void Rows(int64_t begin, int64_t end, int64_t d_runtime, const int32_t* indptr, const int32_t* indices,
          const float* data, const float* x, float* out) {
  const int64_t d = D > 0 ? D : d_runtime;
  float acc[D > 0 ? D : 1024];
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t k = 0; k < d; ++k) acc[k] = 0.f;
    const int32_t stop = indptr[i + 1];
    for (int32_t p = indptr[i]; p < stop; ++p) {
      if (p + kPrefetch < stop) {
        const char* ahead = reinterpret_cast<const char*>(x + int64_t{indices[p + kPrefetch]} * d);
        for (int64_t b = 0; b < d * int64_t{sizeof(float)}; b += 64) __builtin_prefetch(ahead + b);
      }
      const float v = data[p];
      const float* row = x + int64_t{indices[p]} * d;
      for (int64_t k = 0; k < d; ++k) acc[k] += v * row[k];
    }
    std::memcpy(out + i * d, acc, d * sizeof(float));
  }
}

using RowsFn = void (*)(int64_t, int64_t, int64_t, const int32_t*, const int32_t*, const float*, const float*,
                        float*);

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

struct Work {
  RowsFn rows;
  int64_t n_rows, d, num_chunks;
  const int32_t *indptr, *indices;
  const float *data, *x;
  float* out;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  // Takes chunks until none is left; true if this call finished the last chunk.
  void Drain() {
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
      const int64_t begin = c * kChunkRows, end = std::min(n_rows, begin + kChunkRows);
      rows(begin, end, d, indptr, indices, data, x, out);
      if (done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

ffi::Error CsrMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> indptr, ffi::Buffer<ffi::S32> indices,
                         ffi::Buffer<ffi::F32> data, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  const auto xdims = x.dimensions();
  const auto odims = out->dimensions();
  if (xdims.size() != 2 || odims.size() != 2 || xdims[1] != odims[1]) {
    return ffi::Error::InvalidArgument("csr_matmul: x [n_cols, d] and out [n_rows, d] expected");
  }
  const int64_t n_rows = odims[0], d = odims[1];
  if (indptr.element_count() != static_cast<size_t>(n_rows + 1) || indices.element_count() != data.element_count()) {
    return ffi::Error::InvalidArgument("csr_matmul: indptr [n_rows + 1] and indices / data [nnz] expected");
  }
  if (d > 1024 && Pick(d) == Rows<0>) {
    return ffi::Error::InvalidArgument("csr_matmul: at most 1024 columns");
  }
  auto work = std::make_shared<Work>();
  work->rows = Pick(d);
  work->n_rows = n_rows;
  work->d = d;
  work->num_chunks = (n_rows + kChunkRows - 1) / kChunkRows;
  work->indptr = indptr.typed_data();
  work->indices = indices.typed_data();
  work->data = data.typed_data();
  work->x = x.typed_data();
  work->out = out->typed_data();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->num_chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  std::unique_lock<std::mutex> lock(work->mu);
  work->cv.wait(lock, [&] { return work->done.load() == work->num_chunks; });
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
