// Per row g of scores [G, C]: how many of columns [first, C) score higher than column labels[g], a NaN counting as
// higher (`!(s <= t)`), for the 1 + count ranks of the evaluation. Reads the score matrix once, rows split over
// XLA's intra-op thread pool, so XLA neither materialises the [G, C] comparison nor copies a column slice.
// Built by llm4sbr_jax/cpu_kernels.py on first use.
#include <atomic>
#include <cstdint>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunkRows = 8;

ffi::Error CountHigherImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::S32> labels,
                           ffi::ResultBuffer<ffi::S32> out, int64_t first) {
  const auto dims = scores.dimensions();
  if (dims.size() != 2 || labels.element_count() != static_cast<size_t>(dims[0]) ||
      out->element_count() != static_cast<size_t>(dims[0])) {
    return ffi::Error::InvalidArgument("count_higher: scores [G, C], labels [G] and out [G] expected");
  }
  const int64_t rows = dims[0], cols = dims[1];
  if (first < 0 || first > cols) return ffi::Error::InvalidArgument("count_higher: first outside [0, C]");
  const float* s = scores.typed_data();
  const int32_t* label = labels.typed_data();
  int32_t* count = out->typed_data();
  std::atomic<bool> bad{false};
  llm4sbr::ParallelFor(pool, rows, kChunkRows, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      if (label[g] < 0 || label[g] >= cols) {
        bad.store(true);
        count[g] = 0;
        continue;
      }
      const float* row = s + g * cols;
      const float t = row[label[g]];
      int32_t n = 0;
      for (int64_t j = first; j < cols; ++j) n += !(row[j] <= t);
      count[g] = n;
    }
  });
  if (bad.load()) return ffi::Error::InvalidArgument("count_higher: a label outside [0, C)");
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Llm4sbrCountHigher, CountHigherImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("first"));
