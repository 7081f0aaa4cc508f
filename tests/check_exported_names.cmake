cmake_policy(VERSION 3.25)
# What the library shows an engine that links it:
# - its global definitions are the C API's bnorm_ functions and C++ names in namespace bnorm:
#   any other (a helper given C linkage inside `extern "C"`, a function outside the namespace)
#   clashes with an engine's function of the same name when linked statically, and in a shared
#   library the engine's function replaces bnorm's;
# - its internals (bnorm::detail, bnorm::kernels, xsimd's and oneTBB's code) are hidden
#   (bnorm/export.h): a shared libbnorm.so, or an engine's plugin linked against the static
#   one, exports the API alone;
# - and no name of the API is hidden (a declaration of the public headers without BNORM_API,
#   which an engine linking the shared library could not call; seen in the static library,
#   whose objects keep hidden names global, where a shared one makes them local).
# Inputs: -DREADELF= -DLIBRARY=
execute_process(COMMAND "${READELF}" -sW "${LIBRARY}" OUTPUT_VARIABLE table RESULT_VARIABLE result
                ERROR_QUIET)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "readelf failed on ${LIBRARY}")
endif()

# The names defined (a section index, not UND) in rows of the symbol tables
# (Num: Value Size Type Bind Vis Ndx Name) whose binding and visibility match.
function(defined_names out binding visibility)
  string(REGEX MATCHALL "[^\n]* (${binding}) +(${visibility}) +[0-9]+ [^\n]+" rows "${table}")
  set(names "")
  foreach(row IN LISTS rows)
    string(REGEX REPLACE "^.* (${visibility}) +[0-9]+ " "" name "${row}")
    list(APPEND names "${name}")
  endforeach()
  list(REMOVE_DUPLICATES names)
  set(${out} "${names}" PARENT_SCOPE)
endfunction()

# Strong definitions only: template instantiations and inline functions are weak (or unique)
# and merge with the engine's own copies by design.
defined_names(strong "GLOBAL" "DEFAULT|HIDDEN|PROTECTED")
defined_names(visible "GLOBAL|WEAK" "DEFAULT")
defined_names(hidden "GLOBAL" "HIDDEN")
if(NOT strong OR NOT visible)
  message(FATAL_ERROR "no global or no visible definition in ${LIBRARY}: readelf's output changed?")
endif()
set(api_namespace "^(_ZN|_ZNK|_ZT[ISV]N|_ZThn?[0-9]+_N)5bnorm")
set(internal_namespace "NK?(5bnorm6detail|5bnorm7kernels|5xsimd|3tbb)")
set(foreign "")
foreach(name IN LISTS strong)
  if(NOT name MATCHES "^bnorm_" AND NOT name MATCHES "${api_namespace}")
    list(APPEND foreign "${name}")
  endif()
endforeach()
set(internal "")
foreach(name IN LISTS visible)
  if(name MATCHES "${internal_namespace}")
    list(APPEND internal "${name}")
  endif()
endforeach()
set(unexported "")
foreach(name IN LISTS hidden)
  if(name MATCHES "${api_namespace}" AND NOT name MATCHES "${internal_namespace}")
    list(APPEND unexported "${name}")
  endif()
endforeach()
if(foreign)
  message(FATAL_ERROR "global names outside bnorm_ and namespace bnorm:\n${foreign}")
endif()
if(internal)
  message(FATAL_ERROR "internal names of default visibility (exported by a shared build):\n"
                      "${internal}")
endif()
if(unexported)
  message(FATAL_ERROR "API names without BNORM_API (hidden from a shared build's users):\n"
                      "${unexported}")
endif()
list(LENGTH strong strong_count)
list(LENGTH visible visible_count)
message("${strong_count} global definitions, each bnorm_ or in namespace bnorm; "
        "${visible_count} visible names, none of them internal; no API name hidden")
