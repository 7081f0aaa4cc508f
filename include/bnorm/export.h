/* BNORM_API marks what the library exports. bnorm compiles with hidden visibility (CMake's
 * CXX_VISIBILITY_PRESET), so a shared libbnorm.so exports these declarations alone, not its
 * kernels, schedules or the template instantiations of oneTBB and xsimd it uses; the static
 * library likewise gives an engine's plugin, linked against it, nothing else to re-export. The
 * engine's own declarations are not marked; the inline members of bnorm's marked classes it
 * compiles are hidden where it builds with -fvisibility-inlines-hidden too. C and C++. */
#ifndef BNORM_EXPORT_H
#define BNORM_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define BNORM_API __attribute__((visibility("default")))
#else
#define BNORM_API
#endif

#endif /* BNORM_EXPORT_H */
