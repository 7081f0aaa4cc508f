cmake_policy(VERSION 3.25)
# The library defines global names of its own only: the C API's bnorm_ functions and C++ names
# in namespace bnorm. Any other global name (a helper given C linkage inside `extern "C"`, a
# function outside the namespace) clashes with an engine's function of the same name when
# linked statically, and in a shared library the engine's function replaces bnorm's.
# The library's internals (bnorm::detail, bnorm::kernels, xsimd's and oneTBB's code) are
# hidden (bnorm/export.h): a shared libbnorm.so, or an engine's plugin linked against the
# static one, exports the API alone.
# Inputs: -DNM= -DREADELF= -DLIBRARY=
execute_process(COMMAND "${NM}" --defined-only --extern-only "${LIBRARY}" OUTPUT_VARIABLE symbols
                RESULT_VARIABLE result ERROR_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "nm failed on ${LIBRARY}")
endif()
# Strong definitions only (text, data, bss, read-only): template instantiations and inline
# functions are weak (W, V, u) and merge with the engine's own copies by design.
string(REGEX MATCHALL "[0-9a-f]+ [TDBR] [^\n]+" strong "${symbols}")
set(foreign "")
set(count 0)
foreach(line IN LISTS strong)
  string(REGEX REPLACE "^[0-9a-f]+ [TDBR] " "" name "${line}")
  math(EXPR count "${count} + 1")
  if(NOT name MATCHES "^(bnorm_|_ZN5bnorm|_ZNK5bnorm|_ZT[ISV]N5bnorm|_ZTh?n?[0-9]*_N5bnorm)")
    list(APPEND foreign "${name}")
  endif()
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "no strong symbol found in ${LIBRARY}: nm's output changed?")
endif()
if(foreign)
  list(REMOVE_DUPLICATES foreign)
  message(FATAL_ERROR "global names outside bnorm_ and namespace bnorm:\n${foreign}")
endif()
execute_process(COMMAND "${READELF}" -sW "${LIBRARY}" OUTPUT_VARIABLE table RESULT_VARIABLE result
                ERROR_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "readelf failed on ${LIBRARY}")
endif()
# Rows: Num: Value Size Type Bind Vis Ndx Name; defined global or weak names of default
# visibility.
string(REGEX MATCHALL "[^\n]* (GLOBAL|WEAK) +DEFAULT +[0-9]+ [^\n]+" visible "${table}")
set(internal "")
set(visible_count 0)
foreach(line IN LISTS visible)
  string(REGEX REPLACE "^.* DEFAULT +[0-9]+ " "" name "${line}")
  math(EXPR visible_count "${visible_count} + 1")
  if(name MATCHES "NK?(5bnorm6detail|5bnorm7kernels|5xsimd|3tbb)")
    list(APPEND internal "${name}")
  endif()
endforeach()
if(visible_count EQUAL 0)
  message(FATAL_ERROR "no visible symbol found in ${LIBRARY}: readelf's output changed?")
endif()
if(internal)
  list(REMOVE_DUPLICATES internal)
  message(FATAL_ERROR "internal names of default visibility (exported by a shared build):\n"
                      "${internal}")
endif()
# The other way round: a global definition of the API's namespaces (bnorm, bnorm::torch, ...,
# outside detail and kernels) that is hidden is a declaration of the public headers without
# BNORM_API, which an engine linking the shared library could not call.
string(REGEX MATCHALL "[^\n]* GLOBAL +HIDDEN +[0-9]+ [^\n]+" hidden "${table}")
set(unexported "")
foreach(line IN LISTS hidden)
  string(REGEX REPLACE "^.* HIDDEN +[0-9]+ " "" name "${line}")
  if(name MATCHES "^(_ZN|_ZNK|_ZT[ISV]N)5bnorm" AND NOT name MATCHES "NK?5bnorm(6detail|7kernels)")
    list(APPEND unexported "${name}")
  endif()
endforeach()
if(unexported)
  list(REMOVE_DUPLICATES unexported)
  message(FATAL_ERROR "API names without BNORM_API (hidden from a shared build's users):\n"
                      "${unexported}")
endif()
message("${count} strong global definitions, each bnorm_ or in namespace bnorm; "
        "${visible_count} visible names, none of them internal; no API name hidden")
