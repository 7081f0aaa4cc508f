// Kernel testers, in the manner of XNNPACK's: every kernel of every ISA the CPU runs, called
// directly (no planner), over the lengths where vector code breaks — 1, V − 1, V, V + 1, 2V + 1
// and longer, for each ISA's float and double widths V — with odd strides and starts that are
// not vector-aligned, against long double references. Normalization also checks that nothing
// outside the rows it was given is written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "cpu_isa.hpp"
#include "kernels/kernels.hpp"
#include "support.hpp"

using namespace bnorm_test;
namespace kernels = bnorm::kernels;
using bnorm::bfloat16;
using bnorm::float16;

namespace {

/// The kernel table of an ISA, whatever BNORM_MAX_ISA says (the testers run every ISA the CPU
/// has).
const kernels::kernel_table& table_of(bnorm::isa isa) {
  return bnorm::detail::table_for(isa);
}

/// The tail lengths of a vector width: 1, V − 1, V, V + 1, 2V + 1, and a long odd one.
std::vector<std::size_t> lengths(std::size_t v) {
  std::vector<std::size_t> out = {1, v + 1, v, 2 * v + 1, 9 * v + 3, 17 * v + 5};
  if (v > 2) out.push_back(v - 1);
  return out;
}

template <class T>
double tolerance() {
  return std::is_same<T, float>::value ? 2e-6 : 1e-13;
}

template <class T>
class KernelTester : public testing::Test {
 protected:
  using real = long double;

  void for_each_isa(const std::function<void(const kernels::kernel_set<T>&, std::size_t)>& body) {
    for (bnorm::isa isa : isas_under_test()) {
      const kernels::kernel_table& table = table_of(isa);
      SCOPED_TRACE(bnorm::to_string(isa));
      body(table.get<T>(), table.lanes<T>());
    }
  }

  /// Values near `center` with a spread of `spread`.
  std::vector<T> data(std::size_t n, double center, double spread, std::uint64_t salt) {
    return normal_data<T>(n, center, spread, salt);
  }
};

using element_types = testing::Types<float, double>;
TYPED_TEST_SUITE(KernelTester, element_types);

TYPED_TEST(KernelTester, PlaneStatsOverTails) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> lens = lengths(v);
    // Around the float32 blocks of 16 vectors: a whole block, with the tail joining it, two
    // whole blocks and a partial one with a tail.
    for (std::size_t extra : {16 * v, 16 * v + 3, 16 * v + v - 1, 32 * v, 32 * v + 5 * v + 1}) {
      lens.push_back(extra);
    }
    for (std::size_t len : lens) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 2, offset = 1;     // a start one element past alignment
        const std::size_t stride = channels * len + 3;  // odd gap between a channel's planes
        std::vector<T> buffer = this->data(offset + planes * stride, 5.0, 2.0, len * 7 + planes);
        const T* src = buffer.data() + offset;
        const T pivot[channels] = {T(5), T(4.5)};
        double sum[channels] = {0.5, -0.5}, sum_sq[channels] = {1.0, 2.0};
        k.plane_stats(src, {len, planes, stride, channels}, pivot, sum, sum_sq);
        for (std::size_t c = 0; c < channels; ++c) {
          real s = c == 0 ? 0.5L : -0.5L, q = c == 0 ? 1.0L : 2.0L;
          for (std::size_t p = 0; p < planes; ++p)
            for (std::size_t i = 0; i < len; ++i) {
              const real d = static_cast<real>(src[c * len + p * stride + i]) - pivot[c];
              s += d;
              q += d * d;
            }
          EXPECT_NEAR(sum[c], static_cast<double>(s), tolerance<T>() * (1 + std::fabs((double)q)))
              << "len " << len << " planes " << planes << " channel " << c;
          EXPECT_NEAR(sum_sq[c], static_cast<double>(q), tolerance<T>() * static_cast<double>(q))
              << "len " << len << " planes " << planes << " channel " << c;
        }
      }
    }
  });
}

// Short planes are summed a group of channels at once, the group's partials tested together and
// then each channel's where their sum is not finite: a channel whose squares overflow T is
// summed again in float64 (the others not), also where the group's sum alone overflows.
TYPED_TEST(KernelTester, PlaneStatsOfHugeChannelsAmongOrdinaryOnes) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t len : {v + 1, 2 * v + 1, 6 * v + 1}) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 2 * v + 1;  // groups of as many as float64 lanes, and more
        const std::size_t stride = channels * len;
        std::vector<T> x = this->data(planes * stride, 0.5, 2.0, len * 11 + planes);
        for (std::size_t p = 0; p < planes; ++p) {
          for (std::size_t i = 0; i < len; ++i) {
            x[1 * len + p * stride + i] *= T(1e30);  // its float32 squares overflow
            for (std::size_t c = 4; c < 8 && c < channels; ++c) {
              x[c * len + p * stride + i] *= T(2e18);  // squares near 1e37: finite, not their sum
            }
          }
        }
        std::vector<T> pivot(channels, T(0.5));
        std::vector<double> sum(channels, 0.0), sum_sq(channels, 0.0);
        k.plane_stats(x.data(), {len, planes, stride, channels}, pivot.data(), sum.data(),
                      sum_sq.data());
        for (std::size_t c = 0; c < channels; ++c) {
          real s = 0, q = 0;
          for (std::size_t p = 0; p < planes; ++p) {
            for (std::size_t i = 0; i < len; ++i) {
              const real d = static_cast<real>(x[c * len + p * stride + i]) - pivot[c];
              s += d;
              q += d * d;
            }
          }
          const double scale = std::sqrt(static_cast<double>(q) * static_cast<double>(len));
          EXPECT_NEAR(sum[c], static_cast<double>(s), tolerance<T>() * scale)
              << "len " << len << " planes " << planes << " channel " << c;
          EXPECT_NEAR(sum_sq[c], static_cast<double>(q), tolerance<T>() * static_cast<double>(q))
              << "len " << len << " planes " << planes << " channel " << c;
        }
      }
    }
  });
}

// Rows: a slot whose float32 squares overflow, and one holding a NaN, among ordinary slots of
// the same vectors and groups of vectors: the overflowing slot is summed again in float64 (its
// sums right), the NaN slot's sums are NaN, and every other slot keeps the bits it has without
// them (before, the whole group of four vectors was summed again).
TYPED_TEST(KernelTester, InterleavedStatsOfHugeSlotsAmongOrdinaryOnes) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t width : {4 * v + 3, 9 * v + 1}) {
      for (std::size_t rows : {5, 16, 40}) {
        const std::size_t stride = width + 2, huge = 1, not_a_number = v + 2;
        const std::vector<T> plain = this->data(rows * stride, 0.5, 2.0, width * 7 + rows);
        std::vector<T> x = plain;
        for (std::size_t r = 0; r < rows; ++r) x[r * stride + huge] *= T(1e30);
        x[(rows / 2) * stride + not_a_number] = std::numeric_limits<T>::quiet_NaN();
        const std::vector<T> pivot(width + 64, T(0.5));
        std::vector<double> sum(width), sum_sq(width), plain_sum(width), plain_sum_sq(width);
        k.interleaved_stats(x.data(), {rows, width, stride}, pivot.data(), sum.data(),
                            sum_sq.data(), kernels::sums_mode::start);
        k.interleaved_stats(plain.data(), {rows, width, stride}, pivot.data(), plain_sum.data(),
                            plain_sum_sq.data(), kernels::sums_mode::start);
        for (std::size_t j = 0; j < width; ++j) {
          if (j == not_a_number) {
            EXPECT_TRUE(std::isnan(sum_sq[j])) << "width " << width << " rows " << rows;
            continue;
          }
          if (j != huge) {
            ASSERT_EQ(sum[j], plain_sum[j]) << "width " << width << " rows " << rows << " " << j;
            ASSERT_EQ(sum_sq[j], plain_sum_sq[j]) << "width " << width << " rows " << rows;
            continue;
          }
          real s = 0, q = 0;
          for (std::size_t r = 0; r < rows; ++r) {
            const real d = static_cast<real>(x[r * stride + j]) - pivot[j];
            s += d;
            q += d * d;
          }
          const double scale = std::sqrt(static_cast<double>(q) * static_cast<double>(rows));
          EXPECT_NEAR(sum[j], static_cast<double>(s), tolerance<T>() * scale) << width;
          EXPECT_NEAR(sum_sq[j], static_cast<double>(q), tolerance<T>() * static_cast<double>(q))
              << "width " << width << " rows " << rows;
        }
      }
    }
  });
}
TYPED_TEST(KernelTester, InterleavedStatsOverTails) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    // Rows within a block and over several; slot 1's squares overflow a float's partials in the
    // last rows, which are then summed again in float64.
    for (std::size_t width : lengths(v)) {
      for (std::size_t rows : {1, 15, 16, 17, 40, 64, 65, 100}) {
        for (bool accumulate : {false, true}) {
          const std::size_t stride = width + 3, offset = 1;
          std::vector<T> buffer = this->data(offset + rows * stride, -3.0, 1.5, width + rows);
          T* row_data = buffer.data() + offset;
          for (std::size_t r = rows * 3 / 4; width > 1 && r < rows; ++r) {
            row_data[r * stride + 1] *= T(1e30);
          }
          const T* src = row_data;
          std::vector<T> pivot(width + 64);
          for (std::size_t j = 0; j < width; ++j) pivot[j] = T(-3) + T(j % 3);
          std::vector<double> sum(width, 0.25), sum_sq(width, 0.75);
          k.interleaved_stats(src, {rows, width, stride}, pivot.data(), sum.data(), sum_sq.data(),
                              accumulate ? kernels::sums_mode::add : kernels::sums_mode::start);
          for (std::size_t j = 0; j < width; ++j) {
            real s = accumulate ? 0.25L : 0.0L, q = accumulate ? 0.75L : 0.0L, magnitude = 0;
            for (std::size_t r = 0; r < rows; ++r) {
              const real d = static_cast<real>(src[r * stride + j]) - pivot[j];
              s += d;
              q += d * d;
              magnitude += std::fabs(d);
            }
            // Σd against Σ|d| (not Σd², which at slot 1's 1e30 would take any sum).
            ASSERT_NEAR(sum[j], static_cast<double>(s), tolerance<T>() * (1 + (double)magnitude))
                << "width " << width << " rows " << rows << " slot " << j;
            ASSERT_NEAR(sum_sq[j], static_cast<double>(q), tolerance<T>() * (1 + (double)q))
                << "width " << width << " rows " << rows << " slot " << j;
          }
        }
      }
    }
  });
}

/// Coefficients of `n` channels (slots), padded by one widest vector as the kernels' contract
/// asks: centers zero (uncentered), nonzero (centered) or with extreme channels (prescaled).
template <class T>
struct coefficient_buffers {
  std::vector<T> center, scale, shift, prescale;
  /// As gradient_buffers::mark_unwritten.
  void mark_unwritten(T v) {
    for (std::vector<T>* b : {&center, &scale, &shift, &prescale}) b->assign(b->size(), v);
  }
  coefficient_buffers(std::size_t n, int form) {
    const std::size_t padded = n + 64 / sizeof(T);
    center.assign(padded, T(0));
    scale.assign(padded, T(0));
    shift.assign(padded, T(0));
    prescale.assign(padded, T(1));
    for (std::size_t j = 0; j < n; ++j) {
      center[j] = form == 0 ? T(0) : T(1) + T(j % 5) * T(0.25);
      scale[j] = T(0.5) + T(j % 7) * T(0.125);
      shift[j] = T(j % 3) - T(1);
      // Extreme channels: a power-of-two prescale below 1 (it multiplies x and the center)
      // or above (it multiplies x − center).
      if (form == 2 && j % 3 == 1) {
        prescale[j] = T(0.25);
        center[j] = center[j] * T(0.25);
        scale[j] = scale[j] * T(4);
      }
      if (form == 2 && j % 6 == 2) {
        prescale[j] = T(4);
        scale[j] = scale[j] * T(0.25);
      }
    }
  }
  kernels::coefficients<const T> view() const {
    return {center.data(), scale.data(), shift.data(), prescale.data()};
  }
  long double at(std::size_t j, long double x) const {
    const long double h = prescale[j];
    return (x * std::min(h, 1.0L) - center[j]) * std::max(h, 1.0L) * scale[j] + shift[j];
  }
};

TYPED_TEST(KernelTester, PlaneNormalizeOverTailsFormsAndStores) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    // Besides the tails: 7×7 and the longest plane that goes in channel groups (one plane a
    // channel, short planes: normalize_channel_groups), with fewer channels than a group and
    // with two whole groups and three more.
    std::vector<std::size_t> plane_lengths = lengths(v);
    plane_lengths.insert(plane_lengths.end(), {49, 8 * v - 1});
    for (std::size_t len : plane_lengths) {
      for (std::size_t planes : {1, 2}) {
        for (int form : {0, 1, 2}) {
          for (int store : {0, 1, 2, 3}) {  // cached, streamed, streamed in place, in place
            for (const std::size_t channels : {std::size_t{3}, 2 * v + 3}) {
              const bool stream = store == 1 || store == 2, in_place = store >= 2;
              const std::size_t offset = 1, stride = channels * len + 5;
              const std::vector<T> x = this->data(offset + planes * stride + 8, 1.0, 1.0, len);
              std::vector<T> y = in_place ? x : std::vector<T>(x.size(), T(-77));
              const coefficient_buffers<T> coeffs(channels, form);
              const kernels::normalize_params<T> params{coeffs.view(), form == 2, stream, {}};
              k.plane_normalize((in_place ? y : x).data() + offset, y.data() + offset, nullptr,
                                {len, planes, stride, channels}, params, 0);
              for (std::size_t i = 0; i < y.size(); ++i) {
                const std::size_t at = i - offset;
                const bool written =
                    i >= offset && at % stride < channels * len && at / stride < planes;
                if (!written) {
                  ASSERT_EQ(y[i], in_place ? x[i] : T(-77)) << "wrote outside its planes at " << i;
                  continue;
                }
                const long double want = coeffs.at(at % stride / len, x[i]);
                ASSERT_NEAR(y[i], static_cast<double>(want),
                            4 * std::numeric_limits<T>::epsilon() * (1 + std::fabs((double)want)))
                    << "len " << len << " planes " << planes << " form " << form << " store "
                    << store << " channels " << channels << " at " << i;
              }
            }
          }
        }
      }
    }
  });
}

TYPED_TEST(KernelTester, InterleavedNormalizeOverTailsFormsAndStores) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> widths = lengths(v);
    widths.push_back(4 * v);  // the narrow kernels' widths, 1 to 4 whole vectors
    widths.push_back(2 * v);
    // Wide rows of whole cache lines: whole rows from an aligned y stream four at a time.
    widths.push_back(8 * v);
    for (std::size_t width : widths) {
      for (std::size_t extra : {0, 3}) {  // whole rows, and column blocks of a wider row
        for (std::size_t rows : {1, 3, 4, 5, 9}) {
          for (int form : {0, 1, 2}) {
            for (bool stream : {false, true}) {
              const std::size_t stride = width + extra, offset = extra ? 1 : 0;
              const std::vector<T> x = this->data(offset + rows * stride + 8, 1.0, 1.0, width);
              aligned_vector<T> y(x.size(), T(-77));
              const coefficient_buffers<T> coeffs(width, form);
              const kernels::normalize_params<T> params{coeffs.view(), form == 2, stream, {}};
              k.interleaved_normalize(x.data() + offset, y.data() + offset, nullptr,
                                      {rows, width, stride}, params, 0);
              for (std::size_t i = 0; i < y.size(); ++i) {
                const std::size_t at = i - offset;
                const bool written = i >= offset && at % stride < width && at / stride < rows;
                if (!written) {
                  ASSERT_EQ(y[i], T(-77)) << "wrote outside its rows at " << i;
                  continue;
                }
                const long double want = coeffs.at(at % stride, x[i]);
                ASSERT_NEAR(y[i], static_cast<double>(want),
                            4 * std::numeric_limits<T>::epsilon() * (1 + std::fabs((double)want)))
                    << "width " << width << " stride " << stride << " rows " << rows << " form "
                    << form << " stream " << stream << " at " << i;
              }
            }
          }
        }
      }
    }
  });
}

// The plane kernels reduce a vector of channels at a time across lanes and the channels after
// the last whole vector one by one: a channel's pivot and sums must be the same bits either
// way (a schedule's grouping of channels, which can follow the thread count, must never show),
// and its sums right. 2·V + 3 and 2·V + 7 channels (whole groups of eight or four side by side
// on short runs, then one by one) of lengths around the one-block bound of the float32 sums
// (9 vectors) and the tails.
TYPED_TEST(KernelTester, PlaneKernelsGiveEachChannelTheSameBitsInAnyGroup) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> lens = lengths(v);
    for (std::size_t extra : {8 * v + 1, 9 * v - 1, 9 * v, 9 * v + 1, 16 * v + 3, 18 * v + 7}) {
      lens.push_back(extra);
    }
    for (std::size_t len : lens) {
      for (std::size_t planes : {1, 3})
        for (std::size_t channels : {2 * v + 3, 2 * v + 7}) {
          const std::size_t stride = channels * len + 5;
          const std::vector<T> x = this->data(planes * stride, 40.0, 3.0, len * 5 + planes);
          const std::vector<T> dy = this->data(planes * stride, 0.0, 1.0, len * 9 + planes);
          std::vector<T> pivot(channels), alone(1);
          k.plane_pivots(x.data(), {len, planes, stride, channels}, pivot.data());
          std::vector<double> sum(channels, 0.5), sum_sq(channels, 1.5);
          k.plane_stats(x.data(), {len, planes, stride, channels}, pivot.data(), sum.data(),
                        sum_sq.data());
          std::vector<double> sum_dy(channels, 0.0), sum_dy_d(channels, 0.0);
          k.plane_gradient_sums(x.data(), dy.data(), {len, planes, stride, channels}, pivot.data(),
                                sum_dy.data(), sum_dy_d.data());
          for (std::size_t c = 0; c < channels; ++c) {
            const T* xc = x.data() + c * len;
            k.plane_pivots(xc, {len, planes, stride, 1}, alone.data());
            ASSERT_EQ(alone[0], pivot[c]) << "pivot, len " << len << " channel " << c;
            double s = 0.5, q = 1.5, g = 0.0, gd = 0.0;
            k.plane_stats(xc, {len, planes, stride, 1}, &pivot[c], &s, &q);
            k.plane_gradient_sums(xc, dy.data() + c * len, {len, planes, stride, 1}, &pivot[c], &g,
                                  &gd);
            ASSERT_EQ(s, sum[c]) << "len " << len << " planes " << planes << " channel " << c;
            ASSERT_EQ(q, sum_sq[c]) << "len " << len << " planes " << planes << " channel " << c;
            ASSERT_EQ(g, sum_dy[c]) << "len " << len << " planes " << planes << " channel " << c;
            ASSERT_EQ(gd, sum_dy_d[c]) << "len " << len << " planes " << planes << " channel " << c;
            real rs = 0.5L, rq = 1.5L, rg = 0, rgd = 0, magnitude = 1;
            for (std::size_t p = 0; p < planes; ++p)
              for (std::size_t i = 0; i < len; ++i) {
                const std::size_t at = c * len + p * stride + i;
                const real d = static_cast<real>(x[at]) - pivot[c];
                rs += d;
                rq += d * d;
                rg += dy[at];
                rgd += dy[at] * d;
                magnitude += std::fabs(dy[at] * d);
              }
            ASSERT_NEAR(s, (double)rs, tolerance<T>() * (1 + (double)rq)) << "len " << len;
            ASSERT_NEAR(q, (double)rq, tolerance<T>() * (double)rq) << "len " << len;
            ASSERT_NEAR(g, (double)rg, tolerance<T>() * (double)magnitude) << "len " << len;
            ASSERT_NEAR(gd, (double)rgd, tolerance<T>() * (double)magnitude) << "len " << len;
          }
        }
    }
  });
}

// AVX-512's plane pivots, and its sums of planes shorter than nine of its vectors, run on
// 256-bit vectors (half_width_arch): the bits of AVX2's kernels. Longer planes keep their own.
TYPED_TEST(KernelTester, Avx512TakesAvx2VectorsForShortPlanesAndPivots) {
#if defined(__x86_64__)
  using T = TypeParam;
  const std::vector<bnorm::isa> isas = isas_under_test();
  const auto has = [&](bnorm::isa i) {
    return std::find(isas.begin(), isas.end(), i) != isas.end();
  };
  if (!has(bnorm::isa::avx512f)) GTEST_SKIP() << "no AVX-512 on this CPU";
  const kernels::kernel_set<T>& avx2 = table_of(bnorm::isa::avx2).get<T>();
  for (bnorm::isa isa : {bnorm::isa::avx512f, bnorm::isa::avx512bf16}) {
    if (!has(isa)) continue;
    SCOPED_TRACE(bnorm::to_string(isa));
    const kernels::kernel_set<T>& wide = table_of(isa).get<T>();
    const std::size_t v = table_of(isa).lanes<T>(), short_below = 9 * v;
    for (std::size_t len : {std::size_t{1}, std::size_t{5}, v - 1, v, v + 1, 3 * v + 1,
                            short_below - 1, short_below, 2 * short_below + 3}) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 11, stride = channels * len + 3;
        const std::vector<T> x = this->data(planes * stride, 40.0, 3.0, len * 3 + planes);
        const std::vector<T> dy = this->data(planes * stride, 0.0, 1.0, len * 5 + planes);
        const kernels::plane_block block{len, planes, stride, channels};
        std::vector<T> pivot(channels), pivot_avx2(channels);
        wide.plane_pivots(x.data(), block, pivot.data());
        avx2.plane_pivots(x.data(), block, pivot_avx2.data());
        std::vector<double> sums[2][4];
        for (auto& per_table : sums)
          for (auto& values : per_table) values.assign(channels, 0.25);
        for (int t = 0; t < 2; ++t) {
          const kernels::kernel_set<T>& k = t == 0 ? wide : avx2;
          k.plane_stats(x.data(), block, pivot.data(), sums[t][0].data(), sums[t][1].data());
          k.plane_gradient_sums(x.data(), dy.data(), block, pivot.data(), sums[t][2].data(),
                                sums[t][3].data());
        }
        int differing = 0;
        for (std::size_t c = 0; c < channels; ++c) {
          ASSERT_EQ(pivot[c], pivot_avx2[c]) << "len " << len << " channel " << c;
          for (int kind = 0; kind < 4; ++kind) differing += sums[0][kind][c] != sums[1][kind][c];
        }
        if (len < short_below) {
          EXPECT_EQ(differing, 0) << "len " << len << " planes " << planes;
        } else {  // the wide kernels' own order of summation: other bits somewhere
          EXPECT_GT(differing, 0) << "len " << len << " planes " << planes;
        }
      }
    }
  }
#else
  GTEST_SKIP() << "x86 only";
#endif
}

// Pivots: a constant channel's is exactly its value (its output is then exactly 0), and any
// channel's lies within its values' range, also where differences of its values overflow.
TYPED_TEST(KernelTester, PivotsLieWithinTheirChannels) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t len : lengths(v)) {
      const std::size_t channels = 3, planes = 4, stride = channels * len;
      std::vector<T> x = this->data(planes * stride, 10.0, 3.0, len + 11);
      for (std::size_t p = 0; p < planes; ++p)
        for (std::size_t i = 0; i < len; ++i) x[p * stride + i] = T(0.1);  // channel 0: constant
      T pivot[channels];
      k.plane_pivots(x.data(), {len, planes, stride, channels}, pivot);
      EXPECT_EQ(pivot[0], T(0.1)) << "len " << len;
      for (std::size_t c = 1; c < channels; ++c) {
        T lo = std::numeric_limits<T>::max(), hi = -lo;
        for (std::size_t p = 0; p < planes; ++p)
          for (std::size_t i = 0; i < len; ++i) {
            lo = std::min(lo, x[c * len + p * stride + i]);
            hi = std::max(hi, x[c * len + p * stride + i]);
          }
        EXPECT_GE(pivot[c], lo);
        EXPECT_LE(pivot[c], hi);
      }
      // Rows: slot j of `rows` rows.
      for (std::size_t rows : {1, 3, 8, 50}) {
        const std::size_t width = len, row_stride = len + 2;
        std::vector<T> r = this->data(rows * row_stride, -4.0, 1.0, rows + len);
        for (std::size_t i = 0; i < rows; ++i) r[i * row_stride] = T(-2.5);  // slot 0: constant
        if (std::is_same<T, float>::value && width > 1) {
          // Slot 1: values of both signs whose float32 differences overflow (float64's hold).
          for (std::size_t i = 0; i < rows; ++i) {
            r[i * row_stride + 1] = (i % 2 ? -0.75 : 0.75) * std::numeric_limits<T>::max();
          }
        }
        std::vector<T> row_pivot(width);
        k.row_pivots(r.data(), {rows, width, row_stride}, row_pivot.data());
        EXPECT_EQ(row_pivot[0], T(-2.5)) << "rows " << rows;
        for (std::size_t j = 1; j < width; ++j) {
          T lo = std::numeric_limits<T>::max(), hi = -lo;
          for (std::size_t i = 0; i < rows; ++i) {
            lo = std::min(lo, r[i * row_stride + j]);
            hi = std::max(hi, r[i * row_stride + j]);
          }
          EXPECT_GE(row_pivot[j], lo);
          EXPECT_LE(row_pivot[j], hi);
        }
      }
    }
  });
}

// The per-channel kernels: vector channels and the scalar ones after them agree to the bit
// (how channels are blocked cannot change a result), and match long double.
TYPED_TEST(KernelTester, PerChannelKernelsOverTails) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      std::vector<T> mean = this->data(n, 3.0, 2.0, n), gamma = this->data(n, 1.0, 0.5, n + 1),
                     beta = this->data(n, 0.0, 1.0, n + 2);
      std::vector<T> var(n);
      for (std::size_t c = 0; c < n; ++c) var[c] = T(0.5) + T(c % 4);
      coefficient_buffers<T> all(n, 1), one(1, 1);
      all.mark_unwritten(std::numeric_limits<T>::quiet_NaN());
      one.mark_unwritten(T(-7.25));
      EXPECT_FALSE(k.inference_coefficients(
          n, 1e-5, mean.data(), var.data(), gamma.data(), beta.data(),
          {all.center.data(), all.scale.data(), all.shift.data(), all.prescale.data()}, 0));
      for (std::size_t c = 0; c < n; ++c) {
        k.inference_coefficients(
            1, 1e-5, &mean[c], &var[c], &gamma[c], &beta[c],
            {one.center.data(), one.scale.data(), one.shift.data(), one.prescale.data()}, 0);
        EXPECT_EQ(all.center[c], one.center[0]) << c;
        EXPECT_EQ(all.scale[c], one.scale[0]) << c;
        EXPECT_EQ(all.shift[c], one.shift[0]) << c;
        EXPECT_EQ(all.prescale[c], T(1)) << c;
        const long double scale = gamma[c] / std::sqrt(static_cast<long double>(var[c]) + 1e-5L);
        // y at x = mean + 1 from the coefficients, against the formula.
        const long double x = static_cast<long double>(mean[c]) + 1;
        EXPECT_NEAR(static_cast<double>((x - all.center[c]) * all.scale[c] + all.shift[c]),
                    static_cast<double>(scale + beta[c]), 8 * tolerance<T>());
      }
      // commit_statistics (every output, the batch's alone, the running ones alone) and narrow.
      std::vector<double> batch_mean(n), batch_var(n), batch_inv_std(n);
      for (std::size_t c = 0; c < n; ++c) {
        batch_mean[c] = 1.5 + c;
        batch_var[c] = 0.3 + 0.1 * c;
        batch_inv_std[c] = 1.0 / (7.0 + c);
      }
      for (int outputs = 1; outputs <= 3; ++outputs) {
        const bool batch = outputs & 1, running = outputs & 2;
        std::vector<T> saved_mean(n, T(-9)), saved_inv_std(n, T(-9)), running_mean(n, T(2)),
            running_var(n, T(3)), narrowed(n);
        kernels::statistics_commit<T> commit;
        commit.channels = n;
        commit.mean = batch_mean.data();
        commit.variance = batch_var.data();
        commit.inv_std = batch_inv_std.data();
        if (batch) {
          commit.batch_mean = saved_mean.data();
          commit.batch_inv_std = saved_inv_std.data();
        }
        if (running) {
          commit.running_mean = running_mean.data();
          commit.running_var = running_var.data();
          commit.variance_factor = 2.0;
          commit.batch_weight = 0.25;
        }
        k.commit_statistics(commit);
        k.narrow(n, batch_mean.data(), narrowed.data(), false);
        for (std::size_t c = 0; c < n; ++c) {
          EXPECT_EQ(saved_mean[c], batch ? static_cast<T>(batch_mean[c]) : T(-9)) << c;
          EXPECT_EQ(saved_inv_std[c], batch ? static_cast<T>(batch_inv_std[c]) : T(-9)) << c;
          EXPECT_EQ(running_mean[c],
                    running ? static_cast<T>(0.25 * batch_mean[c] + 0.75 * 2.0) : T(2))
              << c;
          EXPECT_EQ(running_var[c],
                    running ? static_cast<T>(0.25 * (batch_var[c] * 2.0) + 0.75 * 3.0) : T(3))
              << c;
          EXPECT_EQ(narrowed[c], static_cast<T>(batch_mean[c])) << c;
        }
      }
    }
  });
}

// channel_moments, with and without gamma (instantiated apart): the moments, 1/std and scale
// against long double over vectors and tails, vector channels and the scalar ones after them
// agreeing to the bit with a call for each alone; a pivot far from its channel's mean asks for
// another look, at every position.
TYPED_TEST(KernelTester, ChannelMomentsOverTails) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      for (int affine = 0; affine < 2; ++affine) {
        const double count = 10.0;
        const std::vector<T> pivot = this->data(n, 3.0, 2.0, n),
                             gamma = this->data(n, 1.0, 0.5, n + 1);
        std::vector<double> sum(n), sum_sq(n);
        for (std::size_t c = 0; c < n; ++c) {
          sum[c] = 0.25 * static_cast<double>(c % 5) - 0.5;  // mean = pivot + sum/count
          sum_sq[c] = 4.0 + static_cast<double>(c % 3) + sum[c] * sum[c] / count;
        }
        const auto moments = [&](std::size_t c0, std::size_t c1, std::vector<double>& mean,
                                 std::vector<double>& variance, std::vector<double>& inv_std,
                                 std::vector<double>& scale) {
          kernels::moment_channels<T> in;
          in.channels = c1 - c0;
          in.count = count;
          in.epsilon = 1e-5;
          in.pivot = pivot.data() + c0;
          in.gamma = affine ? gamma.data() + c0 : nullptr;
          in.sum_to_mean = mean.data() + c0;
          in.sum_sq_to_variance = variance.data() + c0;
          in.inv_std = inv_std.data() + c0;
          in.scale = scale.data() + c0;
          in.max_offset_squared = 1e9;
          return k.channel_moments(in);
        };
        std::vector<double> mean = sum, variance = sum_sq, inv_std(n), scale(n);
        EXPECT_FALSE(moments(0, n, mean, variance, inv_std, scale));
        std::vector<double> mean1 = sum, variance1 = sum_sq, inv_std1(n), scale1(n);
        for (std::size_t c = 0; c < n; ++c) moments(c, c + 1, mean1, variance1, inv_std1, scale1);
        for (std::size_t c = 0; c < n; ++c) {
          const long double m = static_cast<long double>(pivot[c]) + sum[c] / count;
          const long double var = sum_sq[c] / count - (sum[c] / count) * (sum[c] / count);
          const long double inv = 1 / std::sqrt(var + 1e-5L);
          EXPECT_NEAR(mean[c], static_cast<double>(m), 1e-14 * 8) << c;
          EXPECT_NEAR(variance[c], static_cast<double>(var), 1e-14 * 8) << c;
          EXPECT_NEAR(inv_std[c], static_cast<double>(inv), 1e-14) << c;
          EXPECT_NEAR(scale[c], static_cast<double>((affine ? gamma[c] : 1) * inv), 1e-14) << c;
          EXPECT_EQ(mean[c], mean1[c]) << c;
          EXPECT_EQ(variance[c], variance1[c]) << c;
          EXPECT_EQ(inv_std[c], inv_std1[c]) << c;
          EXPECT_EQ(scale[c], scale1[c]) << c;
        }
      }
      for (std::size_t far = 0; far < n; ++far) {
        std::vector<T> pivot(n, T(0));
        std::vector<double> mean(n, 0.0), variance(n, 1.0), inv_std(n), scale(n);
        mean[far] = 100.0;  // Σd: the mean 10 standard deviations from the pivot
        variance[far] = 1000.0 + 10.0;
        kernels::moment_channels<T> in;
        in.channels = n;
        in.count = 10.0;
        in.epsilon = 1e-5;
        in.pivot = pivot.data();
        in.sum_to_mean = mean.data();
        in.sum_sq_to_variance = variance.data();
        in.inv_std = inv_std.data();
        in.scale = scale.data();
        in.max_offset_squared = 9.0;
        EXPECT_TRUE(k.channel_moments(in)) << n << " " << far;
      }
    }
  });
}

// 1/std over the whole float64 range, through channel_moments (one value a channel, so the
// variance is the sum of squares given): within 2^-52 of long double, as a square root and a
// division rounded in turn are (AVX-512 refines an estimate instead: one Newton step too few
// leaves 2^-28); 0, +inf and NaN as 1/sqrt gives them; every channel the same bits in a vector
// of channels as alone.
TYPED_TEST(KernelTester, InverseSquareRootsOverTheRange) {
  using T = TypeParam;
  std::vector<double> variances = {0.0,
                                   std::numeric_limits<double>::denorm_min(),
                                   1e-310,
                                   std::numeric_limits<double>::min(),
                                   std::numeric_limits<double>::max(),
                                   std::numeric_limits<double>::infinity(),
                                   std::numeric_limits<double>::quiet_NaN()};
  for (int exponent = -1060; exponent <= 1023; exponent += 13) {
    const double mantissa = 1.0 + static_cast<double>((exponent + 2000) * 7919 % 1000) / 1000.0;
    variances.push_back(std::ldexp(mantissa, exponent));
  }
  const std::size_t n = variances.size();
  const auto moments = [&](const kernels::kernel_set<T>& k, std::size_t c0, std::size_t c1,
                           std::vector<double>& inv_std) {
    const std::vector<T> pivot(n, T(0));
    std::vector<double> sum(n, 0.0), sum_sq = variances, scale(n);
    kernels::moment_channels<T> in;
    in.channels = c1 - c0;
    in.count = 1.0;
    in.epsilon = 0.0;
    in.pivot = pivot.data() + c0;
    in.sum_to_mean = sum.data() + c0;
    in.sum_sq_to_variance = sum_sq.data() + c0;
    in.inv_std = inv_std.data() + c0;
    in.scale = scale.data() + c0;
    in.max_offset_squared = 1e9;
    k.channel_moments(in);
  };
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t) {
    std::vector<double> all(n), one(n);
    moments(k, 0, n, all);
    for (std::size_t c = 0; c < n; ++c) moments(k, c, c + 1, one);
    double worst = 0.0;
    for (std::size_t c = 0; c < n; ++c) {
      EXPECT_EQ(std::memcmp(&all[c], &one[c], sizeof(double)), 0) << variances[c];
      const double v = variances[c];
      if (!(v > 0.0 && v < std::numeric_limits<double>::infinity())) continue;
      const long double exact = 1.0L / std::sqrt(static_cast<long double>(v));
      keep_worst(worst, static_cast<double>(std::fabs((all[c] - exact) / exact)));
    }
    EXPECT_LE(worst, std::ldexp(1.0, -52));
    EXPECT_EQ(all[0], std::numeric_limits<double>::infinity());
    EXPECT_EQ(all[5], 0.0);
    EXPECT_FALSE(std::signbit(all[5]));
    EXPECT_TRUE(std::isnan(all[6]));
  });
}

// One extreme channel among ordinary ones, at every position of vectors and tails: a shift or
// a scale beyond T (saturated), a scale below T's normal range or a center from which x − center
// overflows (prescaled). Each channel's coefficients are those of a call for it alone (the
// scalar code, which holds the rules), and the kernel says whether some prescale is not 1.
TYPED_TEST(KernelTester, ExtremeChannelsAmongVectorsFollowTheScalarRules) {
  using T = TypeParam;
  using limits = std::numeric_limits<T>;
  struct extreme {
    const char* what;
    T mean, var, gamma, beta;
  };
  const extreme cases[] = {
      {"shift beyond T", T(-0.2), T(1), limits::max(), limits::max()},
      {"scale beyond T", T(0), T(0), limits::max(), T(0)},
      {"scale below normal", T(1), T(1), limits::denorm_min() * 4, T(0)},
      {"overflowing center", limits::max() / 2, T(1), T(1), T(0)},
  };
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (const extreme& e : cases) {
      SCOPED_TRACE(e.what);
      for (std::size_t n : lengths(v)) {
        for (std::size_t at = 0; at < n; ++at) {
          std::vector<T> mean = this->data(n, 3.0, 2.0, n), gamma = this->data(n, 1.0, 0.5, n + 1),
                         beta = this->data(n, 0.0, 1.0, n + 2), var(n, T(0.5));
          mean[at] = e.mean, var[at] = e.var, gamma[at] = e.gamma, beta[at] = e.beta;
          coefficient_buffers<T> all(n, 1), one(1, 1);
          all.mark_unwritten(std::numeric_limits<T>::quiet_NaN());
          one.mark_unwritten(T(-7.25));
          const bool prescaled = k.inference_coefficients(
              n, 1e-5, mean.data(), var.data(), gamma.data(), beta.data(),
              {all.center.data(), all.scale.data(), all.shift.data(), all.prescale.data()}, 0);
          bool some_prescale = false;
          for (std::size_t c = 0; c < n; ++c) {
            k.inference_coefficients(
                1, 1e-5, &mean[c], &var[c], &gamma[c], &beta[c],
                {one.center.data(), one.scale.data(), one.shift.data(), one.prescale.data()}, 0);
            // Bits, not values: a double's shift beyond its range is a NaN (inf − inf) both ways.
            const auto same = [](T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; };
            EXPECT_TRUE(same(all.center[c], one.center[0]) && same(all.scale[c], one.scale[0]) &&
                        same(all.shift[c], one.shift[0]) && same(all.prescale[c], one.prescale[0]))
                << n << " " << at << " " << c;
            if (std::is_same<T, float>::value) {  // float64 holds these values: they saturate
              EXPECT_TRUE(std::isfinite(all.scale[c]) && std::isfinite(all.shift[c]))
                  << n << " " << at << " " << c;
            }
            some_prescale = some_prescale || all.prescale[c] != T(1);
          }
          EXPECT_EQ(prescaled, some_prescale) << n << " " << at;
        }
      }
    }
  });
}

// Reading ahead (the planner's read_ahead_bytes) splits a run's vectors between those that fetch
// within the run and those that fetch in the next: the sums keep their bits, whatever the
// distance (the tests above check them without reading ahead), over tails of planes and of whole
// rows (the rows that read ahead), forward and backward.
TYPED_TEST(KernelTester, ReadingAheadChangesNoBits) {
  using T = TypeParam;
  const auto same_bits = [](const std::vector<double>& a, const std::vector<double>& b) {
    return std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
  };
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> lens = lengths(v);
    lens.push_back(64 * v + 7);  // several blocks of 16 vectors
    for (std::size_t len : lens) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 3, stride = channels * len + 5;
        const std::vector<T> x = this->data(planes * stride, 5.0, 2.0, len + planes);
        const std::vector<T> dy = this->data(planes * stride, 0.0, 1.0, len * 5 + planes);
        const std::vector<T> center = {T(5), T(4.5), T(5.5)};
        std::vector<double> plain[4];
        for (std::size_t bytes :
             {std::size_t(0), std::size_t(64), 4 * v * sizeof(T), std::size_t(16384)}) {
          std::vector<double> sums[4];
          for (auto& s : sums) s.assign(channels, 0.0);
          const kernels::plane_block block{len, planes, stride, channels, bytes};
          k.plane_stats(x.data(), block, center.data(), sums[0].data(), sums[1].data());
          k.plane_gradient_sums(x.data(), dy.data(), block, center.data(), sums[2].data(),
                                sums[3].data());
          for (int i = 0; i < 4; ++i) {
            if (bytes == 0) plain[i] = sums[i];
            EXPECT_TRUE(same_bits(sums[i], plain[i])) << "planes of " << len << " × " << planes
                                                      << ", " << bytes << " bytes ahead, sum " << i;
          }
        }
      }
    }
    for (std::size_t width : lengths(v)) {
      for (std::size_t rows : {1, 16, 17, 40, 100}) {
        const std::vector<T> x = this->data(rows * width, -3.0, 1.5, width + rows);
        const std::vector<T> dy = this->data(rows * width, 0.0, 1.0, width * rows);
        std::vector<T> center(width + 64);
        for (std::size_t j = 0; j < width; ++j) center[j] = T(-3) + T(j % 3);
        std::vector<double> plain[4];
        for (std::size_t bytes : {std::size_t(0), std::size_t(64), std::size_t(16384)}) {
          std::vector<double> sums[4];
          for (auto& s : sums) s.assign(width, 0.0);
          const kernels::row_block block{rows, width, width, bytes};
          k.interleaved_stats(x.data(), block, center.data(), sums[0].data(), sums[1].data(),
                              kernels::sums_mode::start);
          k.interleaved_gradient_sums(x.data(), dy.data(), block, center.data(), sums[2].data(),
                                      sums[3].data(), kernels::sums_mode::start);
          for (int i = 0; i < 4; ++i) {
            if (bytes == 0) plain[i] = sums[i];
            EXPECT_TRUE(same_bits(sums[i], plain[i]))
                << "rows " << rows << " × " << width << ", " << bytes << " bytes ahead, sum " << i;
          }
        }
      }
    }
  });
}

// The rows' sums walked in row order (row_block::in_row_order, the partials in the L1) keep the
// column walk's bits, forward and backward, over tails, strips of row_order_slots (1,024) and
// past them, blocks of 16 rows and their rest, no rows, with and without reading ahead: among
// them a slot whose float32 squares overflow in the last rows (summed again in float64) and one
// holding a NaN. The column walk's sums are checked against the reference in the tests above;
// the row walk's Σdy and Σdy·(x − center) here too.
TYPED_TEST(KernelTester, RowOrderSumsKeepTheColumnWalksBits) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  const auto same_bits = [](const std::vector<double>& a, const std::vector<double>& b) {
    return std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
  };
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> widths = lengths(v);
    widths.insert(widths.end(), {1024, 1024 + 4 * v + 1, 1024 + 5 * v, 2048 + 3});
    for (std::size_t width : widths) {
      for (std::size_t rows : {0, 1, 15, 16, 17, 40}) {
        for (bool accumulate : {false, true}) {
          const std::size_t stride = width + 3, offset = 1;
          std::vector<T> x = this->data(offset + rows * stride, -3.0, 1.5, width + rows);
          const std::vector<T> dy = this->data(offset + rows * stride, 0.0, 1.0, width * rows);
          for (std::size_t r = rows * 3 / 4; width > 1 && r < rows; ++r) {
            x[offset + r * stride + 1] *= T(1e30);
          }
          const std::size_t not_a_number = width / 2;
          if (width > 2 && rows > 1) {
            x[offset + (rows / 2) * stride + not_a_number] = std::numeric_limits<T>::quiet_NaN();
          }
          std::vector<T> center(width + 64);
          for (std::size_t j = 0; j < width; ++j) center[j] = T(-3) + T(j % 3);
          const kernels::sums_mode mode =
              accumulate ? kernels::sums_mode::add : kernels::sums_mode::start;
          std::vector<double> column_walk[4];
          for (bool in_row_order : {false, true}) {
            for (std::size_t bytes : {std::size_t(0), std::size_t(16384)}) {
              std::vector<double> sums[4];
              for (auto& s : sums) s.assign(width, 0.25);
              const kernels::row_block block{rows, width, stride, bytes, in_row_order};
              k.interleaved_stats(x.data() + offset, block, center.data(), sums[0].data(),
                                  sums[1].data(), mode);
              k.interleaved_gradient_sums(x.data() + offset, dy.data() + offset, block,
                                          center.data(), sums[2].data(), sums[3].data(), mode);
              for (int i = 0; i < 4; ++i) {
                if (!in_row_order && bytes == 0) column_walk[i] = sums[i];
                EXPECT_TRUE(same_bits(sums[i], column_walk[i]))
                    << "rows " << rows << " × " << width << ", in row order " << in_row_order
                    << ", " << bytes << " bytes ahead, sum " << i;
              }
              for (std::size_t j = 0; in_row_order && j < width; ++j) {
                if (j == 1 || j == not_a_number) continue;
                real s = accumulate ? 0.25L : 0.0L, q = s, magnitude = 1;
                for (std::size_t r = 0; r < rows; ++r) {
                  const std::size_t at = offset + r * stride + j;
                  s += dy[at];
                  q += dy[at] * (static_cast<real>(x[at]) - center[j]);
                  magnitude += std::fabs(dy[at]) + std::fabs(dy[at] * (x[at] - center[j]));
                }
                ASSERT_NEAR(sums[2][j], (double)s, tolerance<T>() * (double)magnitude)
                    << "width " << width << " rows " << rows << " slot " << j;
                ASSERT_NEAR(sums[3][j], (double)q, tolerance<T>() * (double)magnitude)
                    << "width " << width << " rows " << rows << " slot " << j;
              }
            }
          }
        }
      }
    }
  });
}

// The backward's sums: Σdy and Σdy·(x − center), planes and rows, over tails; and dx from
// its coefficients, in place (dx = dy) too, nothing written outside the pieces.
TYPED_TEST(KernelTester, GradientSumsOverTails) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t len : lengths(v)) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 2, offset = 1, stride = channels * len + 3;
        const std::vector<T> x = this->data(offset + planes * stride, 5.0, 2.0, len + planes);
        const std::vector<T> dy = this->data(offset + planes * stride, 0.0, 1.0, len * 3 + 1);
        const T center[channels] = {T(5), T(4.5)};
        double sum[channels] = {0.5, -0.5}, sum_sq[channels] = {1.0, 2.0};
        k.plane_gradient_sums(x.data() + offset, dy.data() + offset,
                              {len, planes, stride, channels}, center, sum, sum_sq);
        for (std::size_t c = 0; c < channels; ++c) {
          real s = c == 0 ? 0.5L : -0.5L, q = c == 0 ? 1.0L : 2.0L, magnitude = 1;
          for (std::size_t p = 0; p < planes; ++p)
            for (std::size_t i = 0; i < len; ++i) {
              const std::size_t at = offset + c * len + p * stride + i;
              s += dy[at];
              q += dy[at] * (static_cast<real>(x[at]) - center[c]);
              magnitude += std::fabs(dy[at] * (static_cast<real>(x[at]) - center[c]));
            }
          EXPECT_NEAR(sum[c], (double)s, tolerance<T>() * (double)magnitude) << "len " << len;
          EXPECT_NEAR(sum_sq[c], (double)q, tolerance<T>() * (double)magnitude) << "len " << len;
        }
      }
    }
    for (std::size_t width : lengths(v)) {
      for (std::size_t rows : {1, 15, 16, 17, 40}) {
        for (bool accumulate : {false, true}) {
          const std::size_t stride = width + 3, offset = 1;
          const std::vector<T> x = this->data(offset + rows * stride, -3.0, 1.5, width + rows);
          const std::vector<T> dy = this->data(offset + rows * stride, 0.0, 1.0, width * rows);
          std::vector<T> center(width + 64);
          for (std::size_t j = 0; j < width; ++j) center[j] = T(-3) + T(j % 3);
          std::vector<double> sum(width, 0.25), sum_sq(width, 0.75);
          k.interleaved_gradient_sums(
              x.data() + offset, dy.data() + offset, {rows, width, stride}, center.data(),
              sum.data(), sum_sq.data(),
              accumulate ? kernels::sums_mode::add : kernels::sums_mode::start);
          for (std::size_t j = 0; j < width; ++j) {
            real s = accumulate ? 0.25L : 0.0L, q = accumulate ? 0.75L : 0.0L, magnitude = 1;
            for (std::size_t r = 0; r < rows; ++r) {
              const std::size_t at = offset + r * stride + j;
              s += dy[at];
              q += dy[at] * (static_cast<real>(x[at]) - center[j]);
              magnitude += std::fabs(dy[at] * (static_cast<real>(x[at]) - center[j]));
            }
            ASSERT_NEAR(sum[j], (double)s, tolerance<T>() * (double)magnitude)
                << "width " << width << " rows " << rows << " slot " << j;
            ASSERT_NEAR(sum_sq[j], (double)q, tolerance<T>() * (double)magnitude)
                << "width " << width << " rows " << rows << " slot " << j;
          }
        }
      }
    }
  });
}

// The backward's sums in float64 throughout, for channels whose float32 sums may have lost
// subnormal products: with x − center around 1e-23 and dy around 1e-22, every float32 product
// is subnormal (the float32 sums are off by up to half of each), yet these sums stay within
// 1e-13 of Σ|dy·(x − center)| and of Σ|dy|, over planes and rows with their tails; they start
// the sums whatever the arrays held.
TYPED_TEST(KernelTester, GradientSumsInFloat64KeepSubnormalProducts) {
  using T = TypeParam;
  using real = typename TestFixture::real;
  constexpr double tiny_x = 1e-23, tiny_dy = 1e-22, held = 7.0;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t len : lengths(v)) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 3, offset = 1, stride = channels * len + 3;
        const std::vector<T> x = this->data(offset + planes * stride, 0.0, tiny_x, len + planes);
        const std::vector<T> dy = this->data(offset + planes * stride, 0.0, tiny_dy, len * 3);
        const T center[channels] = {T(tiny_x), T(-tiny_x / 2), T(0)};
        double sum[channels] = {held, held, held}, sum_d[channels] = {held, held, held};
        k.plane_gradient_sums_f64(x.data() + offset, dy.data() + offset,
                                  {len, planes, stride, channels}, center, sum, sum_d);
        for (std::size_t c = 0; c < channels; ++c) {
          real s = 0, q = 0, s_magnitude = 0, q_magnitude = 0;
          for (std::size_t p = 0; p < planes; ++p)
            for (std::size_t i = 0; i < len; ++i) {
              const std::size_t at = offset + c * len + p * stride + i;
              const real term = dy[at] * (static_cast<real>(x[at]) - center[c]);
              s += dy[at];
              q += term;
              s_magnitude += std::fabs(static_cast<real>(dy[at]));
              q_magnitude += std::fabs(term);
            }
          ASSERT_NEAR(sum[c], (double)s, 1e-13 * (double)s_magnitude) << "len " << len;
          ASSERT_NEAR(sum_d[c], (double)q, 1e-13 * (double)q_magnitude) << "len " << len;
        }
      }
    }
    std::vector<std::size_t> widths = lengths(v);
    widths.push_back(9 * v + 5);  // groups of four vectors, one more, and single slots
    for (std::size_t width : widths) {
      for (std::size_t rows : {1, 63, 64, 65, 130}) {
        const std::size_t stride = width + 3, offset = 1;
        const std::vector<T> x = this->data(offset + rows * stride, 0.0, tiny_x, width + rows);
        const std::vector<T> dy = this->data(offset + rows * stride, 0.0, tiny_dy, width * rows);
        std::vector<T> center(width);
        for (std::size_t j = 0; j < width; ++j) center[j] = T(tiny_x * (double(j % 3) - 1));
        std::vector<double> sum(width, held), sum_d(width, held);
        k.interleaved_gradient_sums_f64(x.data() + offset, dy.data() + offset,
                                        {rows, width, stride}, center.data(), sum.data(),
                                        sum_d.data());
        for (std::size_t j = 0; j < width; ++j) {
          real s = 0, q = 0, s_magnitude = 0, q_magnitude = 0;
          for (std::size_t r = 0; r < rows; ++r) {
            const std::size_t at = offset + r * stride + j;
            const real term = dy[at] * (static_cast<real>(x[at]) - center[j]);
            s += dy[at];
            q += term;
            s_magnitude += std::fabs(static_cast<real>(dy[at]));
            q_magnitude += std::fabs(term);
          }
          ASSERT_NEAR(sum[j], (double)s, 1e-13 * (double)s_magnitude)
              << "width " << width << " rows " << rows << " slot " << j;
          ASSERT_NEAR(sum_d[j], (double)q, 1e-13 * (double)q_magnitude)
              << "width " << width << " rows " << rows << " slot " << j;
        }
      }
    }
  });
}

/// dx coefficients of `n` channels (slots), padded by one widest vector.
template <class T>
struct gradient_buffers {
  std::vector<T> center, dy_center, dy_scale, x_scale, shift, prescale, dy_prescale;
  /// Every value `v`, for buffers a kernel writes: one it leaves unwritten keeps it (two runs
  /// compared start from different values, so that neither passes for the other).
  void mark_unwritten(T v) {
    for (std::vector<T>* b :
         {&center, &dy_center, &dy_scale, &x_scale, &shift, &prescale, &dy_prescale}) {
      b->assign(b->size(), v);
    }
  }
  /// `prescaled`: every other channel's prescale 1/4 (center·1/4, x_scale·4) or 4 (x_scale/4),
  /// and every third one's dy prescale 4 (dy_scale, x_scale and shift divided by it: the kernel
  /// multiplies dx by it) or 1/4 (dy_scale divided by it).
  explicit gradient_buffers(std::size_t n, bool prescaled = false) {
    const std::size_t padded = n + 64 / sizeof(T);
    prescale.assign(padded, T(1));
    dy_prescale.assign(padded, T(1));
    center.assign(padded, T(0));
    dy_center.assign(padded, T(0));
    dy_scale.assign(padded, T(0));
    x_scale.assign(padded, T(0));
    shift.assign(padded, T(0));
    for (std::size_t j = 0; j < n; ++j) {
      center[j] = T(1) + T(j % 5) * T(0.25);
      dy_center[j] = T(j % 3) * T(0.375) - T(0.25);
      dy_scale[j] = T(0.5) + T(j % 7) * T(0.125);
      x_scale[j] = T(-0.25) + T(j % 3) * T(0.125);
      shift[j] = T(j % 3) - T(1);
      if (prescaled && j % 4 == 1) {
        prescale[j] = T(0.25);
        center[j] *= T(0.25);
        x_scale[j] *= T(4);
      }
      if (prescaled && j % 4 == 3) {
        prescale[j] = T(4);
        x_scale[j] *= T(0.25);
      }
      if (prescaled && j % 3 != 0) {
        dy_prescale[j] = j % 3 == 1 ? T(4) : T(0.25);
        dy_scale[j] /= dy_prescale[j];
        if (dy_prescale[j] > T(1)) {
          x_scale[j] /= dy_prescale[j];
          shift[j] /= dy_prescale[j];
        }
      }
    }
  }
  kernels::gradient_coefficients<const T> view() const {
    return {center.data(), dy_center.data(), dy_scale.data(),   x_scale.data(),
            shift.data(),  prescale.data(),  dy_prescale.data()};
  }
  kernels::gradient_coefficients<T> writable() {
    return {center.data(), dy_center.data(), dy_scale.data(),   x_scale.data(),
            shift.data(),  prescale.data(),  dy_prescale.data()};
  }
  long double at(std::size_t j, long double x, long double dy) const {
    const long double h = prescale[j], g = dy_prescale[j];
    return ((dy - dy_center[j]) * std::min(g, 1.0L) * dy_scale[j] +
            (x * std::min(h, 1.0L) - center[j]) * std::max(h, 1.0L) * x_scale[j] + shift[j]) *
           std::max(g, 1.0L);
  }
};

/// (x − center)·scale + shift as every ISA's map kernels round it: in T, x − center, then one
/// rounding of the product and the sum where the ISA fuses them (all but SSE2), two where not.
/// The kernels may compute it in another order (map.hpp computes shift − (center − x)·scale),
/// but not with other bits: rounding is symmetric in sign.
template <class T>
T rounded_as_kernels(bnorm::isa isa, T x, T center, T scale, T shift) {
  const T d = x - center;
  if (isa != bnorm::isa::sse2) return std::fma(d, scale, shift);
  volatile T product = d * scale;  // volatile: no contraction into an fma
  return product + shift;
}

// The centered normalization and dx give the bits of their expression, not merely values
// near it: a rewrite of the arithmetic (for a folded load, say) that rounds once more fails
// here, where the tolerance of the testers above would let it pass.
TYPED_TEST(KernelTester, CenteredMapsRoundAsTheirExpression) {
  using T = TypeParam;
  for (bnorm::isa isa : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(isa));
    const kernels::kernel_table& table = table_of(isa);
    const kernels::kernel_set<T>& k = table.get<T>();
    const std::size_t v = table.lanes<T>();
    std::vector<std::size_t> plane_lengths = lengths(v);
    plane_lengths.insert(plane_lengths.end(), {49, 8 * v - 1});  // channel groups too
    for (std::size_t len : plane_lengths) {
      for (std::size_t planes : {1, 2}) {
        for (bool stream : {false, true}) {
          for (const std::size_t channels : {std::size_t{3}, 2 * v + 3}) {
            const std::size_t offset = 1, stride = channels * len + 5;
            const std::vector<T> x = this->data(offset + planes * stride + 8, 1.0, 1.0, len);
            const std::vector<T> dy = this->data(x.size(), 0.0, 1.0, len + 9);
            std::vector<T> y(x.size()), dx(x.size());
            const coefficient_buffers<T> coeffs(channels, 1);
            const kernels::normalize_params<T> params{coeffs.view(), false, stream, {}};
            k.plane_normalize(x.data() + offset, y.data() + offset, nullptr,
                              {len, planes, stride, channels}, params, 0);
            const gradient_buffers<T> g(channels);
            k.plane_gradient(x.data() + offset, dy.data() + offset, dx.data() + offset,
                             {len, planes, stride, channels}, {g.view(), false, stream}, 0);
            for (std::size_t at = 0; at < planes * stride; ++at) {
              if (at % stride >= channels * len) continue;
              const std::size_t c = at % stride / len, i = offset + at;
              ASSERT_EQ(y[i], rounded_as_kernels(isa, x[i], coeffs.center[c], coeffs.scale[c],
                                                 coeffs.shift[c]))
                  << "len " << len << " planes " << planes << " stream " << stream << " at " << at;
              // dx = (dy − dy_center)·dy_scale + ((x − center)·x_scale + shift), the outer sum
              // rounded as the inner one.
              const T inner = rounded_as_kernels(isa, x[i], g.center[c], g.x_scale[c], g.shift[c]);
              ASSERT_EQ(dx[i], rounded_as_kernels(isa, dy[i], g.dy_center[c], g.dy_scale[c], inner))
                  << "len " << len << " planes " << planes << " stream " << stream << " at " << at;
            }
          }
        }
      }
    }
  }
}

// Every plane length that goes in channel groups (below eight vectors: each vector's lanes
// find their channels by arithmetic on the length), one plane a channel: the normalization,
// centered and not, and dx.
TYPED_TEST(KernelTester, PlaneMapsEveryShortPlaneLength) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t len = 1; len < 8 * v; ++len) {
      for (int form : {0, 1}) {
        const std::size_t channels = 2 * v + 3;
        const std::vector<T> x = this->data(channels * len, 1.0, 1.0, len);
        std::vector<T> y(x.size(), T(-77));
        const coefficient_buffers<T> coeffs(channels, form);
        const kernels::normalize_params<T> params{coeffs.view(), false, false, {}};
        k.plane_normalize(x.data(), y.data(), nullptr, {len, 1, channels * len, channels}, params,
                          0);
        const std::vector<T> dy = this->data(x.size(), 0.0, 1.0, len + 9);
        std::vector<T> dx(x.size(), T(-77));
        const gradient_buffers<T> g(channels, false);
        k.plane_gradient(x.data(), dy.data(), dx.data(), {len, 1, channels * len, channels},
                         {g.view(), false, false}, 0);
        for (std::size_t i = 0; i < y.size(); ++i) {
          const long double want = coeffs.at(i / len, x[i]);
          ASSERT_NEAR(y[i], static_cast<double>(want),
                      4 * std::numeric_limits<T>::epsilon() * (1 + std::fabs((double)want)))
              << "len " << len << " form " << form << " at " << i;
          const long double want_dx = g.at(i / len, x[i], dy[i]);
          ASSERT_NEAR(dx[i], static_cast<double>(want_dx),
                      8 * std::numeric_limits<T>::epsilon() * (1 + std::fabs((double)want_dx)))
              << "dx, len " << len << " at " << i;
        }
      }
    }
  });
}

TYPED_TEST(KernelTester, GradientMapOverTailsStoresAndInPlace) {
  using T = TypeParam;
  const double bound = 8 * std::numeric_limits<T>::epsilon();
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    std::vector<std::size_t> plane_lengths = lengths(v);
    plane_lengths.insert(plane_lengths.end(), {49, 8 * v - 1});  // channel groups too
    for (std::size_t len : plane_lengths) {
      for (std::size_t planes : {1, 2}) {
        for (bool stream : {false, true}) {
          for (bool in_place : {false, true})
            for (bool prescaled : {false, true})
              for (const std::size_t channels : {std::size_t{3}, 2 * v + 3}) {
                const std::size_t offset = 1, stride = channels * len + 5;
                const std::vector<T> x = this->data(offset + planes * stride + 8, 1.0, 1.0, len);
                const std::vector<T> dy = this->data(x.size(), 0.0, 1.0, len + 9);
                std::vector<T> dx = in_place ? dy : std::vector<T>(x.size(), T(-77));
                const gradient_buffers<T> coeffs(channels, prescaled);
                const kernels::gradient_params<T> params{coeffs.view(), prescaled, stream};
                k.plane_gradient(x.data() + offset, (in_place ? dx : dy).data() + offset,
                                 dx.data() + offset, {len, planes, stride, channels}, params, 0);
                for (std::size_t i = 0; i < dx.size(); ++i) {
                  const std::size_t at = i - offset;
                  const bool written =
                      i >= offset && at % stride < channels * len && at / stride < planes;
                  if (!written) {
                    ASSERT_EQ(dx[i], in_place ? dy[i] : T(-77)) << "wrote outside at " << i;
                    continue;
                  }
                  const long double want = coeffs.at(at % stride / len, x[i], dy[i]);
                  ASSERT_NEAR(dx[i], (double)want, bound * (1 + std::fabs((double)want)))
                      << "len " << len << " planes " << planes << " stream " << stream
                      << " prescaled " << prescaled << " at " << i;
                }
              }
        }
      }
    }
    std::vector<std::size_t> widths = lengths(v);
    // Around the width from which rows go two at a time (two_row_gradient_slots), with a tail;
    // 8v and 512: rows of whole cache lines (with no extra stride and an aligned dx, streamed
    // rows of 8v go four at a time, two vectors a step on AVX-512, one below; on AVX-512, rows
    // of an odd number of vectors end in a step of one: v, streamed or not, and 17v + 5 in
    // cache).
    widths.insert(widths.end(), {511, 512, 515 + v, 8 * v});
    for (std::size_t width : widths) {
      for (std::size_t extra : {0, 3}) {
        for (std::size_t rows : {1, 4, 9}) {
          for (bool stream : {false, true}) {
            for (bool in_place : {false, true})
              for (bool prescaled : {false, true}) {
                const std::size_t stride = width + extra, offset = extra ? 1 : 0;
                // Fetches ahead, past the rows' end at the last: no change to what is written.
                const std::size_t read_ahead = stream && rows == 4 ? 4096 : 0;
                const std::vector<T> x_data =
                    this->data(offset + rows * stride + 8, 1.0, 1.0, width);
                const std::vector<T> dy_data = this->data(x_data.size(), 0.0, 1.0, width + 13);
                const aligned_vector<T> x(x_data.begin(), x_data.end());
                const aligned_vector<T> dy(dy_data.begin(), dy_data.end());
                aligned_vector<T> dx = in_place ? dy : aligned_vector<T>(x.size(), T(-77));
                const gradient_buffers<T> coeffs(width, prescaled);
                const kernels::gradient_params<T> params{coeffs.view(), prescaled, stream};
                k.interleaved_gradient(x.data() + offset, (in_place ? dx : dy).data() + offset,
                                       dx.data() + offset, {rows, width, stride, read_ahead},
                                       params, 0);
                for (std::size_t i = 0; i < dx.size(); ++i) {
                  const std::size_t at = i - offset;
                  const bool written = i >= offset && at % stride < width && at / stride < rows;
                  if (!written) {
                    ASSERT_EQ(dx[i], in_place ? dy[i] : T(-77)) << "wrote outside at " << i;
                    continue;
                  }
                  const long double want = coeffs.at(at % stride, x[i], dy[i]);
                  ASSERT_NEAR(dx[i], (double)want, bound * (1 + std::fabs((double)want)))
                      << "width " << width << " rows " << rows << " stream " << stream
                      << " prescaled " << prescaled;
                }
              }
          }
        }
      }
    }
  });
}

/// The inputs of channel_gradients over the channels of `mean`, 50 values each, from 1/std.
template <class T>
kernels::gradient_channels<T> channel_inputs(const std::vector<T>& mean,
                                             const std::vector<T>& inv_std,
                                             const std::vector<T>& gamma,
                                             const std::vector<double>& sum_dy,
                                             std::vector<double>& sum_dy_d) {
  kernels::gradient_channels<T> in;
  in.channels = mean.size();
  in.count = 50;
  in.mean = mean.data();
  in.inv_std = inv_std.data();
  in.gamma = gamma.data();
  in.sum_dy = sum_dy.data();
  in.sum_dy_d = sum_dy_d.data();
  return in;
}

/// channel_gradients over all the channels of `in` (its Σdy·(x − mean) copied, not replaced)
/// and over each channel alone, for the tests that vector channels and the scalar ones agree to
/// the bit.
template <class T>
struct channel_gradient_runs {
  gradient_buffers<T> all;
  std::vector<gradient_buffers<T>> alone;
  std::vector<double> dgamma, dgamma_alone;
  kernels::gradient_flags flags;
  std::vector<kernels::gradient_flags> flags_alone;

  channel_gradient_runs(const kernels::kernel_set<T>& k, kernels::gradient_channels<T> in)
      : all(in.channels), dgamma(in.sum_dy_d, in.sum_dy_d + in.channels) {
    all.mark_unwritten(std::numeric_limits<T>::quiet_NaN());
    const std::vector<double> sums = dgamma;
    in.sum_dy_d = dgamma.data();
    const kernels::gradient_coefficients<T> out = all.writable();
    flags = k.channel_gradients(in, &out, 0);
    const auto at = [](const T* p, std::size_t c) { return p ? p + c : nullptr; };
    for (std::size_t c = 0; c < in.channels; ++c) {
      alone.emplace_back(1);
      alone.back().mark_unwritten(T(-7.25));
      dgamma_alone.push_back(sums[c]);
    }
    for (std::size_t c = 0; c < in.channels; ++c) {
      kernels::gradient_channels<T> single = in;
      single.channels = 1;
      single.mean = at(in.mean, c);
      single.gamma = at(in.gamma, c);
      single.inv_std = at(in.inv_std, c);
      single.variance = at(in.variance, c);
      single.sum_dy += c;
      single.sum_dy_d = &dgamma_alone[c];
      const kernels::gradient_coefficients<T> one = alone[c].writable();
      flags_alone.push_back(k.channel_gradients(single, &one, 0));
    }
  }

  /// Channel c's dγ and coefficients: the same bits alone as among the others.
  void expect_same_bits(std::size_t c) const {
    const gradient_buffers<T>& one = alone[c];
    EXPECT_EQ(dgamma[c], dgamma_alone[c]) << c;
    EXPECT_EQ(all.center[c], one.center[0]) << c;
    EXPECT_EQ(all.dy_center[c], one.dy_center[0]) << c;
    EXPECT_EQ(all.dy_scale[c], one.dy_scale[0]) << c;
    EXPECT_EQ(all.x_scale[c], one.x_scale[0]) << c;
    EXPECT_EQ(all.shift[c], one.shift[0]) << c;
    EXPECT_EQ(all.prescale[c], one.prescale[0]) << c;
    EXPECT_EQ(all.dy_prescale[c], one.dy_prescale[0]) << c;
  }
};

/// Channel c's dy center and shift as channel_gradients gives them from Σdy over `count` values
/// and a = γ·inv_std: the mean of dy rounded to T (0 where dy − mean could overflow), and
/// −a·(its remainder).
template <class T>
struct dy_centering {
  T center;
  long double shift;
  dy_centering(double sum_dy, double count, long double a) {
    const double mean = sum_dy * (1.0 / count);
    const T rounded = static_cast<T>(mean);
    center = std::fabs(static_cast<double>(rounded)) <
                     std::ldexp(1.0, std::numeric_limits<T>::max_exponent -
                                         std::numeric_limits<T>::digits - 1)
                 ? rounded
                 : T(0);
    shift = -a * (static_cast<long double>(mean) - center);
  }
};

// dγ and the dx coefficients: vector channels and the scalar ones after them agree to the bit,
// from 1/std or from the variance.
TYPED_TEST(KernelTester, ChannelGradientsOverTails) {
  using T = TypeParam;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      const std::vector<T> mean = this->data(n, 3.0, 2.0, n),
                           gamma = this->data(n, 1.0, 0.5, n + 1);
      std::vector<T> var(n), inv(n);
      for (std::size_t c = 0; c < n; ++c) {
        var[c] = T(0.5) + T(c % 4);
        inv[c] = static_cast<T>(1 / std::sqrt(static_cast<double>(var[c]) + 1e-5));
      }
      const std::vector<double> sum_dy = normal_data<double>(n, 0.0, 3.0, n + 2);
      std::vector<double> sums = normal_data<double>(n, 0.0, 3.0, n + 3);
      for (const bool from_variance : {false, true}) {
        kernels::gradient_channels<T> in = channel_inputs(mean, inv, gamma, sum_dy, sums);
        if (from_variance) {
          in.inv_std = nullptr;
          in.variance = var.data();
          in.epsilon = 1e-5;
        }
        const channel_gradient_runs<T> runs(k, in);
        EXPECT_FALSE(runs.flags.prescaled);
        const gradient_buffers<T>& all = runs.all;
        for (std::size_t c = 0; c < n; ++c) {
          runs.expect_same_bits(c);
          EXPECT_EQ(all.center[c], mean[c]) << c;
          EXPECT_EQ(all.prescale[c], T(1)) << c;
          EXPECT_EQ(all.dy_prescale[c], T(1)) << c;
          const long double i = from_variance ? 1 / std::sqrt((long double)var[c] + 1e-5L) : inv[c];
          EXPECT_NEAR(runs.dgamma[c], (double)(sums[c] * i),
                      1e-14 * (1 + std::fabs(runs.dgamma[c])));
          const long double a = gamma[c] * i;
          EXPECT_NEAR(all.dy_scale[c], (double)a, 4 * tolerance<T>() * std::fabs((double)a));
          EXPECT_NEAR(all.x_scale[c], (double)(-a * i * (sums[c] * i) / 50),
                      4 * tolerance<T>() * (1 + std::fabs((double)(a * i * sums[c] * i / 50))));
          const dy_centering<T> want(sum_dy[c], 50, a);
          EXPECT_EQ(all.dy_center[c], want.center) << c;
          EXPECT_NEAR(all.shift[c], (double)want.shift,
                      4 * tolerance<T>() * std::fabs((double)want.shift) +
                          std::numeric_limits<T>::denorm_min());
        }
      }
    }
  });
}

// The dy center is the mean of dy rounded to T, and 0 where dy − center could overflow: a float
// mean just below 2^103 (half an ulp of the largest float) that rounds to 2^103 is such a mean
// (2^103 − (−FLT_MAX) rounds to infinity), whatever its unrounded value. Vector and scalar
// channels alike.
TEST(KernelDyCenter, ZeroWhereTheRoundedMeanCouldOverflowDy) {
  const double largest_center = std::ldexp(1.0, 103);
  // Σdy/M of 4 values: just below 2^103 (rounds to it), 2^103 − 2^80 (a float below it), and
  // ordinary ones; eight channels and one more, for the vector and the scalar code.
  const std::vector<double> means = {largest_center - std::ldexp(1.0, 78),
                                     largest_center - std::ldexp(1.0, 80),
                                     -(largest_center - std::ldexp(1.0, 78)),
                                     3.0,
                                     largest_center,
                                     -1.5,
                                     1e30,
                                     largest_center - std::ldexp(1.0, 78),
                                     largest_center - std::ldexp(1.0, 78)};
  const std::size_t n = means.size();
  std::vector<double> sum_dy(n), sums(n, 0.0);
  for (std::size_t c = 0; c < n; ++c) sum_dy[c] = 4 * means[c];
  const std::vector<float> mean(n, 0.5f), inv(n, 0.5f), gamma(n, 1.0f);
  for (bnorm::isa isa : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(isa));
    const kernels::kernel_set<float>& k = table_of(isa).get<float>();
    kernels::gradient_channels<float> in = channel_inputs(mean, inv, gamma, sum_dy, sums);
    in.count = 4.0;
    std::vector<double> dgamma = sums;
    in.sum_dy_d = dgamma.data();
    gradient_buffers<float> out(n);
    const kernels::gradient_coefficients<float> writable = out.writable();
    k.channel_gradients(in, &writable, 0);
    const std::vector<float> want = {
        0.f, static_cast<float>(means[1]), 0.f, 3.f, 0.f, -1.5f, 1e30f, 0.f, 0.f};
    for (std::size_t c = 0; c < n; ++c) EXPECT_EQ(out.dy_center[c], want[c]) << "channel " << c;
  }
}

// Channels whose dy coefficient a = γ·inv_std (γ of 2^(9/16·max_exponent)) or shift (Σdy/M of
// 2^106 or 2^973, too large to center dy on: dy − Σdy/M could overflow) is near the top
// of T, among ordinary ones: the three terms are divided by a power of two g > 1, the dy
// prescale, and give a, x_scale and the shift back to T's precision; vector and scalar channels
// agree to the bit.
TYPED_TEST(KernelTester, ChannelGradientsTermsNearTheTop) {
  using T = TypeParam;
  constexpr int max_exponent = std::numeric_limits<T>::max_exponent;
  // Σdy/M of 2^106 (float) or 2^973 (double): past the dy centers (2^103, 2^970), while x_scale
  // divided by the g that the shift takes stays normal.
  constexpr int beyond_centering = max_exponent - std::numeric_limits<T>::digits + 2;
  const auto big_gamma = [](std::size_t c) { return c % 7 == 3; };
  const auto big_shift = [&](std::size_t c) { return c % 5 == 2 && !big_gamma(c); };
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      const std::vector<T> mean = this->data(n, 3.0, 2.0, n), inv = this->data(n, 2.0, 0.5, n + 4);
      std::vector<T> gamma = this->data(n, 1.0, 0.5, n + 1);
      std::vector<double> sum_dy = normal_data<double>(n, 0.0, 3.0, n + 2);
      for (std::size_t c = 0; c < n; ++c) {
        if (big_gamma(c)) gamma[c] = static_cast<T>(std::ldexp(1.0, max_exponent * 9 / 16));
        if (big_shift(c)) sum_dy[c] = std::ldexp(c % 2 ? 50.0 : -50.0, beyond_centering);
      }
      std::vector<double> sums = normal_data<double>(n, 0.0, 3.0, n + 3);
      const kernels::gradient_channels<T> in = channel_inputs(mean, inv, gamma, sum_dy, sums);
      const channel_gradient_runs<T> runs(k, in);
      EXPECT_EQ(runs.flags.prescaled, n > 2) << n;
      const gradient_buffers<T>& all = runs.all;
      for (std::size_t c = 0; c < n; ++c) {
        runs.expect_same_bits(c);
        EXPECT_EQ(all.prescale[c], T(1)) << c;
        EXPECT_EQ(all.center[c], mean[c]) << c;
        const long double g = all.dy_prescale[c];
        int exponent = 0;
        EXPECT_EQ(std::frexp(static_cast<double>(g), &exponent), 0.5) << c;  // a power of two
        EXPECT_EQ(g > 1, big_gamma(c) || big_shift(c)) << c;
        EXPECT_GE(g, 1) << c;
        const long double i = inv[c], a = gamma[c] * i, x_scale = -a * i * (sums[c] * i) / 50;
        const dy_centering<T> want(sum_dy[c], 50, a);
        EXPECT_EQ(all.dy_center[c], want.center) << c;
        EXPECT_EQ(want.center == T(0), big_shift(c)) << c;
        EXPECT_NEAR(static_cast<double>(all.dy_scale[c] * g / a), 1.0, 4 * tolerance<T>()) << c;
        EXPECT_NEAR(static_cast<double>(all.x_scale[c] * g / x_scale), 1.0, 4 * tolerance<T>())
            << c;
        EXPECT_NEAR(static_cast<double>(all.shift[c] * g), static_cast<double>(want.shift),
                    4 * tolerance<T>() * std::fabs(static_cast<double>(want.shift)) +
                        std::numeric_limits<T>::denorm_min())
            << c;
      }
    }
  });
}

// Channels whose x_scale leaves T (1/std of 2^±(0.4·max_exponent): x_scale near 2^±(1.2·
// max_exponent)) take a prescale: a power of two h, x_scale/h, the center times h where h < 1,
// which give x_scale back to T's precision; where γ·inv_std leaves T too (γ of 2^±(0.64·
// max_exponent)), dy_scale takes its own, g, and where g > 1 x_scale and the shift are divided by
// it too. The vector and the scalar channels agree to the bit.
TYPED_TEST(KernelTester, ChannelGradientsPrescaleExtremeChannels) {
  using T = TypeParam;
  if (std::is_same_v<T, double>) {
    // Its extreme γ·inv_std (2^1063) is beyond float64, whose coefficients are computed in
    // float64 (an infinite one, as in PyTorch); an x_scale beyond float64 from finite factors:
    // Edges.DoubleSpreadBelowTheSquareRange.
    GTEST_SKIP() << "float64: γ·inv_std of 2^1063 is beyond the float64 coefficients";
  }
  constexpr int wide = std::numeric_limits<T>::max_exponent * 2 / 5;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      const std::vector<T> mean = this->data(n, 3.0, 2.0, n);
      std::vector<T> gamma = this->data(n, 1.0, 0.5, n + 1), inv(n);
      const auto dy_extreme = [](std::size_t c) { return c % 6 >= 4; };
      for (std::size_t c = 0; c < n; ++c) {
        const int sign = c % 3 == 1 ? 1 : -1;
        inv[c] = c % 3 == 0 ? T(0.75) : static_cast<T>(std::ldexp(1.0, sign * wide));
        if (dy_extreme(c)) gamma[c] = static_cast<T>(std::ldexp(1.0, sign * wide * 8 / 5));
      }
      const std::vector<double> sum_dy = normal_data<double>(n, 0.0, 3.0, n + 2);
      std::vector<double> sums = normal_data<double>(n, 0.0, 3.0, n + 3);
      const kernels::gradient_channels<T> in = channel_inputs(mean, inv, gamma, sum_dy, sums);
      const channel_gradient_runs<T> runs(k, in);
      EXPECT_EQ(runs.flags.prescaled, n >= 2) << n;
      EXPECT_FALSE(runs.flags.small_products) << n;
      // A sum of products below the normal range, in the last channel: summed again.
      std::vector<double> small_sums = sums;
      small_sums[n - 1] = 0x1p-110;
      kernels::gradient_channels<T> small = in;
      small.sum_dy_d = small_sums.data();
      EXPECT_TRUE(k.channel_gradients(small, nullptr, 0).small_products) << n;
      small_sums.assign(n, 0.0);  // zero sums where Σdy is not zero: summed again
      EXPECT_TRUE(k.channel_gradients(small, nullptr, 0).small_products) << n;
      small_sums.assign(n, 0.0);  // where it is zero too, they keep their bits
      const std::vector<double> no_dy(n, 0.0);
      small.sum_dy = no_dy.data();
      EXPECT_FALSE(k.channel_gradients(small, nullptr, 0).small_products) << n;
      const gradient_buffers<T>& all = runs.all;
      for (std::size_t c = 0; c < n; ++c) {
        runs.expect_same_bits(c);
        EXPECT_EQ(runs.flags_alone[c].prescaled, c % 3 != 0) << c;
        const long double h = all.prescale[c];
        int exponent = 0;
        EXPECT_EQ(std::frexp(static_cast<double>(h), &exponent), 0.5) << c;  // a power of two
        // 1/std of 2^51 and γ of 2^81: x_scale ~2^234 over g = 2^127 is within float.
        EXPECT_EQ(h == 1, c % 3 == 0 || c % 6 == 4) << c;
        EXPECT_EQ(all.center[c], static_cast<T>(mean[c] * std::min(h, 1.0L))) << c;
        const long double i = inv[c], a = gamma[c] * i, x_scale = -a * i * (sums[c] * i) / 50;
        const long double g = all.dy_prescale[c];
        EXPECT_NEAR(static_cast<double>(all.x_scale[c] * h * std::max(g, 1.0L) / x_scale), 1.0,
                    4 * tolerance<T>())
            << c;
        EXPECT_EQ(std::frexp(static_cast<double>(g), &exponent), 0.5) << c;
        EXPECT_EQ(g != 1, dy_extreme(c)) << c;
        EXPECT_NEAR(static_cast<double>(all.dy_scale[c] * g / a), 1.0, 4 * tolerance<T>()) << c;
        const dy_centering<T> want(sum_dy[c], 50, a);
        EXPECT_EQ(all.dy_center[c], want.center) << c;
        if (std::fabs(want.shift / std::max(g, 1.0L)) >= std::numeric_limits<T>::min()) {
          EXPECT_NEAR(static_cast<double>(all.shift[c] * std::max(g, 1.0L) / want.shift), 1.0,
                      4 * tolerance<T>())
              << c;
        }
      }
    }
  });
}

/// The epilogue's output from the plain normalized value y and the residual z (add+ReLU).
template <class T>
T activated(const kernels::epilogue<T>& post, T y, T z) {
  using kind = kernels::epilogue_kind;
  if (post.kind == kind::add_relu) y = y + z;
  if (post.kind == kind::clamp) return y < post.lo ? post.lo : y > post.hi ? post.hi : y;
  return y < T(0) ? T(0) : y;
}

// The map kernels' epilogues over tails, forms and stores: each element the plain kernel's
// value through the activation, to the bit; add+ReLU in place over its residual too, and over
// planes fetching the residual ahead (within a plane, into the next, past the tensor's end).
TYPED_TEST(KernelTester, NormalizeEpiloguesOverTails) {
  using T = TypeParam;
  using kind = kernels::epilogue_kind;
  this->for_each_isa([&](const kernels::kernel_set<T>& k, std::size_t v) {
    for (std::size_t n : lengths(v)) {
      for (const kind e : {kind::relu, kind::clamp, kind::add_relu}) {
        for (bool stream : {false, true}) {
          for (bool in_place : {false, true}) {
            if (in_place && e != kind::add_relu) continue;
            const kernels::epilogue<T> post{e, T(-0.25), T(0.5)};
            const std::size_t channels = 3, rows = 5, offset = 1;
            const std::vector<T> x = this->data(offset + channels * n * rows + 8, 0.0, 1.0, n);
            const std::vector<T> z = this->data(x.size(), 0.0, 1.0, n + 5);
            const coefficient_buffers<T> coeffs(channels * n, 1);
            const auto expect = [&](const std::vector<T>& plain, const std::vector<T>& got,
                                    std::size_t count, const char* kernel) {
              for (std::size_t i = offset; i < offset + count; ++i) {
                ASSERT_EQ(got[i], activated(post, plain[i], z[i]))
                    << kernel << " n " << n << " stream " << stream;
              }
            };
            // Planes: `channels` channels of one plane of n values, then of two planes
            // (channels·n apart) whose residual is fetched a line or 16 KiB ahead.
            std::vector<T> plain(x.size(), T(-77)), got = in_place ? z : plain;
            const kernels::normalize_params<T> plain_params{coeffs.view(), false, stream, {}};
            const kernels::normalize_params<T> params{coeffs.view(), false, stream, post};
            k.plane_normalize(x.data() + offset, plain.data() + offset, nullptr,
                              {n, 1, 0, channels}, plain_params, 0);
            k.plane_normalize(x.data() + offset, got.data() + offset,
                              (in_place ? got : z).data() + offset, {n, 1, 0, channels}, params, 0);
            expect(plain, got, channels * n, "plane_normalize");
            for (const std::size_t ahead : {std::size_t{64}, std::size_t{16384}}) {
              plain.assign(x.size(), T(-77));
              got = in_place ? z : plain;
              const kernels::plane_block block{n, 2, channels * n, channels, ahead};
              k.plane_normalize(x.data() + offset, plain.data() + offset, nullptr,
                                {n, 2, channels * n, channels}, plain_params, 0);
              k.plane_normalize(x.data() + offset, got.data() + offset,
                                (in_place ? got : z).data() + offset, block, params, 0);
              expect(plain, got, 2 * channels * n, "plane_normalize fetching ahead");
            }
            // Rows: one row of channels·n slots.
            plain.assign(x.size(), T(-77));
            got = in_place ? z : plain;
            k.interleaved_normalize(x.data() + offset, plain.data() + offset, nullptr,
                                    {1, channels * n, channels * n}, plain_params, 0);
            k.interleaved_normalize(x.data() + offset, got.data() + offset,
                                    (in_place ? got : z).data() + offset,
                                    {1, channels * n, channels * n}, params, 0);
            expect(plain, got, channels * n, "interleaved_normalize");
          }
        }
      }
    }
    // Rows of whole cache lines from aligned buffers (the map's walk of four rows a coefficient
    // load, streamed or not): five rows of 8·V slots, four at a time then one, in place over
    // the residual too.
    for (const kind e : {kind::relu, kind::clamp, kind::add_relu}) {
      for (bool stream : {false, true}) {
        for (bool in_place : {false, true}) {
          if (in_place && e != kind::add_relu) continue;
          const kernels::epilogue<T> post{e, T(-0.25), T(0.5)};
          const std::size_t rows = 5, width = 8 * v;
          const std::vector<T> xs = this->data(rows * width, 0.0, 1.0, width);
          const std::vector<T> zs = this->data(rows * width, 0.0, 1.0, width + 5);
          const aligned_vector<T> x(xs.begin(), xs.end()), z(zs.begin(), zs.end());
          const coefficient_buffers<T> coeffs(width, 1);
          const kernels::normalize_params<T> plain_params{coeffs.view(), false, stream, {}};
          const kernels::normalize_params<T> params{coeffs.view(), false, stream, post};
          aligned_vector<T> plain(x.size(), T(-77)), got = in_place ? z : plain;
          k.interleaved_normalize(x.data(), plain.data(), nullptr, {rows, width, width},
                                  plain_params, 0);
          k.interleaved_normalize(x.data(), got.data(), (in_place ? got : z).data(),
                                  {rows, width, width}, params, 0);
          for (std::size_t i = 0; i < x.size(); ++i) {
            ASSERT_EQ(got[i], activated(post, plain[i], z[i]))
                << "rows of " << width << " stream " << stream << " in place " << in_place << " at "
                << i;
          }
        }
      }
    }
  });
}

// The half storage types' sums over planes (float32 compute, where bfloat16 on AVX2 and AVX-512
// reads a pair of vectors as its even and its odd elements): forward and backward, over the
// tails of float's width V and runs of many blocks, starts one element past alignment and odd
// gaps between planes, against long double sums of the decoded values; reading ahead changes
// no bits.
template <class S>
void half_plane_sums_over_tails() {
  using real = long double;
  const auto encode = [](const std::vector<float>& values) {
    std::vector<S> out;
    for (float f : values) out.push_back(S::from_float(f));
    return out;
  };
  const auto same_bits = [](const double* a, const double* b, std::size_t n) {
    return std::memcmp(a, b, n * sizeof(double)) == 0;
  };
  for (bnorm::isa isa : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(isa));
    const kernels::kernel_table& table = table_of(isa);
    const kernels::kernel_set<S>& k = table.get<S>();
    const std::size_t v = table.lanes<float>();
    std::vector<std::size_t> lens = lengths(v);
    for (std::size_t extra : {16 * v, 16 * v + 3, 32 * v + 5 * v + 1, 64 * v + 7}) {
      lens.push_back(extra);
    }
    for (std::size_t len : lens) {
      for (std::size_t planes : {1, 3}) {
        const std::size_t channels = 2, offset = 1, stride = channels * len + 3;
        const std::vector<S> x =
            encode(normal_data<float>(offset + planes * stride, 5.0, 2.0, len * 7 + planes));
        const std::vector<S> dy =
            encode(normal_data<float>(offset + planes * stride, 0.0, 1.0, len * 3 + planes));
        const float center[channels] = {5.0f, 4.5f};
        double sums[2][4][channels];  // without and with reading ahead: Σd, Σd², Σdy, Σdy·d
        for (int ahead = 0; ahead < 2; ++ahead) {
          double(&got)[4][channels] = sums[ahead];
          for (std::size_t c = 0; c < channels; ++c) {
            got[0][c] = got[2][c] = 0.5;
            got[1][c] = got[3][c] = 1.0;
          }
          const kernels::plane_block block{len, planes, stride, channels,
                                           ahead ? std::size_t(16384) : std::size_t(0)};
          k.plane_stats(x.data() + offset, block, center, got[0], got[1]);
          k.plane_gradient_sums(x.data() + offset, dy.data() + offset, block, center, got[2],
                                got[3]);
        }
        for (int i = 0; i < 4; ++i) {
          EXPECT_TRUE(same_bits(sums[0][i], sums[1][i], channels))
              << "len " << len << " planes " << planes << ": reading ahead changed sum " << i;
        }
        for (std::size_t c = 0; c < channels; ++c) {
          real s = 0.5L, q = 1.0L, g = 0.5L, gd = 1.0L, magnitude = 1.0L;
          for (std::size_t p = 0; p < planes; ++p) {
            for (std::size_t i = 0; i < len; ++i) {
              const std::size_t at = offset + c * len + p * stride + i;
              const real d = static_cast<real>(bnorm::kernels::to_float(x[at])) - center[c];
              const real grad = bnorm::kernels::to_float(dy[at]);
              s += d;
              q += d * d;
              g += grad;
              gd += grad * d;
              magnitude += std::fabs(grad * d);
            }
          }
          const double tol = tolerance<float>();
          EXPECT_NEAR(sums[0][0][c], (double)s, tol * (1 + (double)q)) << "len " << len;
          EXPECT_NEAR(sums[0][1][c], (double)q, tol * (double)q) << "len " << len;
          EXPECT_NEAR(sums[0][2][c], (double)g, tol * (double)magnitude) << "len " << len;
          EXPECT_NEAR(sums[0][3][c], (double)gd, tol * (double)magnitude) << "len " << len;
        }
      }
    }
  }
}

/// body(k, kf, v) for each ISA under test: its kernels of the half type S, its float32 kernels
/// and the lanes of its float32 vectors.
template <class S, class Body>
void for_each_isa_with_float(const Body& body) {
  for (bnorm::isa isa : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(isa));
    const kernels::kernel_table& table = table_of(isa);
    body(table.get<S>(), table.get<float>(), table.lanes<float>());
  }
}

/// `values` rounded to S, and `values` replaced by the decoded ones: the inputs of a half
/// kernel and of the float32 kernel it is compared with.
template <class S>
aligned_vector<S> rounded_to(std::vector<float>& values) {
  aligned_vector<S> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    out[i] = S::from_float(values[i]);
    values[i] = bnorm::kernels::to_float(out[i]);
  }
  return out;
}

// Rows of half storage types: each slot's sums are the same bits as float32's over the decoded
// values (bfloat16 on AVX2 and AVX-512 reads pairs of vectors of slots as their even and odd
// slots, and puts the partials back in order, where the rows start on a pair's bytes), over
// widths around the groups of four vectors and the tails, blocks of rows and their tails; rows
// on cache lines (the pairs, where the width keeps them there), and starts one element past
// alignment with strides past the width; forward and backward, started and added to.
template <class S>
void half_row_sums_match_float() {
  for_each_isa_with_float<S>(
      [](const kernels::kernel_set<S>& k, const kernels::kernel_set<float>& kf, std::size_t v) {
        std::vector<std::size_t> widths = lengths(v);
        for (std::size_t extra : {4 * v, 4 * v + 1, 8 * v, 8 * v + v - 1, 12 * v + 3, 64 * v}) {
          widths.push_back(extra);
        }
        for (std::size_t width : widths) {
          for (std::size_t rows : {1, 16, 17, 40}) {
            for (bool add : {false, true}) {
              for (bool aligned : {true, false}) {
                const std::size_t stride = aligned ? width : width + 3, offset = aligned ? 0 : 1;
                const std::size_t n = offset + rows * stride;
                std::vector<float> xf = normal_data<float>(n, -3.0, 1.5, width + rows);
                std::vector<float> dyf = normal_data<float>(n, 0.0, 1.0, width * rows);
                const aligned_vector<S> x = rounded_to<S>(xf), dy = rounded_to<S>(dyf);
                std::vector<float> center(width + 64);
                for (std::size_t j = 0; j < width; ++j) center[j] = -3.0f + 0.25f * float(j % 5);
                std::vector<double> got[4], want[4];
                for (int i = 0; i < 4; ++i) got[i] = want[i] = std::vector<double>(width, 0.5 + i);
                const kernels::row_block block{rows, width, stride};
                const auto mode = add ? kernels::sums_mode::add : kernels::sums_mode::start;
                k.interleaved_stats(x.data() + offset, block, center.data(), got[0].data(),
                                    got[1].data(), mode);
                kf.interleaved_stats(xf.data() + offset, block, center.data(), want[0].data(),
                                     want[1].data(), mode);
                k.interleaved_gradient_sums(x.data() + offset, dy.data() + offset, block,
                                            center.data(), got[2].data(), got[3].data(), mode);
                kf.interleaved_gradient_sums(xf.data() + offset, dyf.data() + offset, block,
                                             center.data(), want[2].data(), want[3].data(), mode);
                for (int i = 0; i < 4; ++i) {
                  EXPECT_EQ(0, std::memcmp(got[i].data(), want[i].data(), width * sizeof(double)))
                      << "rows " << rows << " × " << width << (add ? " added" : " started")
                      << (aligned ? " aligned" : "") << ", sum " << i;
                }
              }
            }
          }
        }
      });
}

// The backward's dx over rows of half storage types: each value float32's dx over the decoded
// values, rounded to the storage type (the half kernels compute in float32 as the float32 ones
// do), over widths around the vectors, the tails and the width from which rows go two at a
// time; ordinary and streaming stores, in place and not, prescaled channels and not; rows of
// whole cache lines from an aligned dx (streamed, those narrower than two_row_gradient_slots
// go four at a time, fetching ahead), and rows one element past alignment with strides past the
// width.
template <class S>
void half_row_gradient_matches_float() {
  for_each_isa_with_float<S>([](const kernels::kernel_set<S>& k,
                                const kernels::kernel_set<float>& kf, std::size_t v) {
    std::vector<std::size_t> widths = lengths(v);
    widths.insert(widths.end(), {16 * v, 16 * v + v, 512, 1024 + 32});
    for (std::size_t width : widths)
      for (std::size_t rows : {1, 4, 9})
        for (bool aligned : {true, false})
          for (bool stream : {false, true})
            for (bool in_place : {false, true})
              for (bool prescaled : {false, true}) {
                const std::size_t stride = aligned ? width : width + 3, offset = aligned ? 0 : 1;
                const std::size_t n = offset + rows * stride + 8;
                std::vector<float> xf = normal_data<float>(n, 1.0, 1.0, width + rows);
                std::vector<float> dyf = normal_data<float>(n, 0.0, 1.0, width * rows + 7);
                const aligned_vector<S> x = rounded_to<S>(xf);
                const aligned_vector<S> dy = rounded_to<S>(dyf);
                aligned_vector<S> dx = in_place ? dy : aligned_vector<S>(n, S::from_float(-77.0f));
                std::vector<float> dxf = in_place ? dyf : std::vector<float>(n, -77.0f);
                const gradient_buffers<float> coeffs(width, prescaled);
                const kernels::gradient_params<float> params{coeffs.view(), prescaled, stream};
                const std::size_t read_ahead = stream && rows == 4 ? 4096 : 0;
                const kernels::row_block block{rows, width, stride, read_ahead};
                k.interleaved_gradient(x.data() + offset, (in_place ? dx : dy).data() + offset,
                                       dx.data() + offset, block, params, 0);
                kf.interleaved_gradient(xf.data() + offset, (in_place ? dxf : dyf).data() + offset,
                                        dxf.data() + offset, block, params, 0);
                for (std::size_t i = 0; i < n; ++i) {
                  ASSERT_EQ(dx[i].bits, S::from_float(dxf[i]).bits)
                      << "rows " << rows << " × " << width << (aligned ? " aligned" : "")
                      << (stream ? " streamed" : "") << (in_place ? " in place" : "")
                      << (prescaled ? " prescaled" : "") << " at " << i;
                }
              }
  });
}

TEST(HalfKernelTester, BFloat16RowGradientIsFloat32sRounded) {
  half_row_gradient_matches_float<bfloat16>();
}
TEST(HalfKernelTester, Float16RowGradientIsFloat32sRounded) {
  half_row_gradient_matches_float<float16>();
}

TEST(HalfKernelTester, BFloat16RowSumsAreFloat32s) {
  half_row_sums_match_float<bfloat16>();
}
TEST(HalfKernelTester, Float16RowSumsAreFloat32s) {
  half_row_sums_match_float<float16>();
}

TEST(HalfKernelTester, BFloat16PlaneSumsOverTails) {
  half_plane_sums_over_tails<bfloat16>();
}
TEST(HalfKernelTester, Float16PlaneSumsOverTails) {
  half_plane_sums_over_tails<float16>();
}

}  // namespace
