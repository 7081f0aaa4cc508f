# Dependencies from Debian bookworm packages: libtbb-dev, libxsimd-dev (and, for tests and
# benchmarks, libgtest-dev and libbenchmark-dev).
find_package(TBB 2021 CONFIG REQUIRED)

# Debian's xsimd 8.1.0 package names "xtl" in its INTERFACE_LINK_LIBRARIES without depending on
# it, so linking fails with "cannot find -lxtl". xsimd only needs xtl for xtl::xcomplex, which we
# do not use: an empty stand-in target is enough.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
find_package(xsimd 8.1 CONFIG REQUIRED)
